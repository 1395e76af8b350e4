"""Kernel side: the Jupyter side — the ConfidentialKernel, its badge, its kernelspecs; never imports the enclave."""
