"""Pure crypto layer: keys and RA-TLS certificates, client certificates, domain-separated hashing, X.509 loading
and the one chain walker, the dataset ciphers, and the one strict DER reader and CBOR decoder.

With the platform verifiers of ``attestation.platforms``, the only code that imports ``cryptography.hazmat``
(``tests/test_architecture.py``). No I/O, no clock: time and randomness are parameters.
"""
