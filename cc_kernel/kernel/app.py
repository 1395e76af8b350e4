"""Kernel side: launch the ConfidentialKernel under ipykernel's IPKernelApp.

``--mode simulation|hardware`` selects the kernelspec's mode (it becomes ``ConfidentialKernel.mode``).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    # First thing: start the simulated enclave, so its start-up overlaps ours (kernel/early.py; it is adopted
    # only if it is exactly the enclave the kernel would start, and attested like any other).
    from cc_kernel.kernel.early import start_early

    start_early(args)

    from ipykernel.kernelapp import IPKernelApp

    from cc_kernel.kernel.kernel import ConfidentialKernel

    if "--mode" in args:
        i = args.index("--mode")
        mode = args[i + 1] if i + 1 < len(args) else ""
        del args[i : i + 2]
        args.append(f"--ConfidentialKernel.mode={mode}")
    IPKernelApp.launch_instance(argv=args, kernel_class=ConfidentialKernel)
