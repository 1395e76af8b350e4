"""Monitor: the trusted half inside the TEE; it never imports ipykernel, jupyter_client or zmq."""
