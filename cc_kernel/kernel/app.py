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
    from cc_kernel.memory import tune_allocator

    tune_allocator()  # uploads are read, hashed and sent in 1 MiB chunks

    from ipykernel.kernelapp import IPKernelApp

    from cc_kernel.kernel.kernel import ConfidentialKernel

    class ConfidentialKernelApp(IPKernelApp):
        """IPKernelApp without the shell-channel thread: ConfidentialKernel has no subshells (kernel_info
        advertises none), so it answers shell requests from the main thread, and the shell socket must belong to
        that thread. With the thread, ipykernel receives shell messages there while a kernel without subshells
        sends its replies from the main thread: one ZMQ socket used by two threads (a libzmq assertion, seen
        under load, kills the kernel)."""

        def init_sockets(self) -> None:
            super().init_sockets()
            unused, self.shell_channel_thread = self.shell_channel_thread, None
            if unused is not None:
                unused.io_loop.close()  # never started; it owns no socket yet

    if "--mode" in args:
        i = args.index("--mode")
        mode = args[i + 1] if i + 1 < len(args) else ""
        del args[i : i + 2]
        args.append(f"--ConfidentialKernel.mode={mode}")
    ConfidentialKernelApp.launch_instance(argv=args, kernel_class=ConfidentialKernel)
