from cc_kernel.enclave.process import main

raise SystemExit(main())
