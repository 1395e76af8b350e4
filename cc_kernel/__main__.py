from cc_kernel.cli import main

raise SystemExit(main())
