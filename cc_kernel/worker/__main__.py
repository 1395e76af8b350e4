from cc_kernel.worker.main import main

raise SystemExit(main())
