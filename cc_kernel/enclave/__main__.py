"""Monitor: ``python -m cc_kernel.enclave`` runs one enclave session (``cc_kernel.enclave.process``)."""

from cc_kernel.enclave.process import main

raise SystemExit(main())
