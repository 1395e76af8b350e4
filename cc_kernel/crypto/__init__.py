"""Pure cryptography layer: keys, domain-separated hashing, X.509 chain walking, RA-TLS certificates.

The only package that imports ``cryptography.hazmat``. No I/O, no clock: time and randomness are parameters.
"""
