"""Lab tools: the tools of the untrusted path, shared by the teaching lab and the test harness (and by nothing else).

Layer: I/O (sockets, processes), above ``channel``; ``cc_kernel.teaching`` and ``cc_kernel.testing`` import it,
the kernel, the enclave and the worker never do (``tests/test_architecture.py``). Each idea has one module:

- ``tls``: the one TLS-record walker (record boundaries of a byte stream fed in pieces of any size);
- ``relay``: the one recording, tampering TCP relay (a man in the middle, as an untrusted host is);
- ``processes``: the one process stopper and the parser of an enclave server's "serving on" line.
"""
