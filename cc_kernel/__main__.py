"""Command line: ``python -m cc_kernel`` runs the ``cc-kernel`` command (``cc_kernel.cli``)."""

from cc_kernel.cli import main

raise SystemExit(main())
