"""The attested channel: ``ratls`` (pure peer check) and ``transport`` (the one module with sockets and TLS)."""
