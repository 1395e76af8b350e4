"""Worker: ``python -m cc_kernel.worker`` runs the cells of one session (``cc_kernel.worker.main``); the monitor
starts it as ``python -P -m``, so the working directory stays off ``sys.path`` until the sandbox is applied."""

from cc_kernel.worker.main import main

raise SystemExit(main())
