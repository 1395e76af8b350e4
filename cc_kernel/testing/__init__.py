"""Test helpers: public, used by our tests and benchmarks; never imported by the rest of cc_kernel.

``cc_kernel.testing.enclaves``: real enclave processes on a socketpair or behind a supervisor, an in-process
simulated enclave, the recording / bit-flipping TCP relay of ``cc_kernel.labkit``, raw TLS clients and pinned
simulation policies.
``cc_kernel.testing.waiting``: the one way tests wait for a condition (``wait_until``, ``wait_until_async``).
``cc_kernel.testing.providers``: what a host hands the hardware evidence providers (the SEV-SNP certificate
table).
"""
