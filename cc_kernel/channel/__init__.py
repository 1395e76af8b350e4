"""I/O: the attested channel — ``ratls`` (the pure peer check), ``transport`` (the one module with TLS),
``accept`` (the enclave's bounded start of a session), ``client`` (the kernel's), ``clients`` (the
authorised-clients file).

The package itself holds only the constants an enclave needs before it imports its TLS stack (so
``python -m cc_kernel.enclave`` can start its worker first, see :mod:`cc_kernel.enclave.process`).
"""

#: Seconds a client has from the accepted connection to its AttestRequest (TLS handshake, Hello, request).
#: An honest kernel needs a few round trips; the kernel itself gives up after 15 s by default.
PRE_ATTESTATION_TIMEOUT = 10.0
