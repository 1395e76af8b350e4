"""Kernel side: ``python -m cc_kernel.kernel``, what the kernelspecs run (see :mod:`cc_kernel.kernel.app`)."""

from cc_kernel.kernel.app import main

main()
