"""The Jupyter side: the ConfidentialKernel, its badge and its kernelspecs. Never imports cc_kernel.enclave."""
