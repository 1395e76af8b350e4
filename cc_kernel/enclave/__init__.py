"""Runs inside the TEE; never imports ipykernel, jupyter_client or zmq."""
