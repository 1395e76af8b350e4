"""Worker: the untrusted half inside the TEE; runs the user's cells (IPython) in a sandbox; holds no key, no evidence
source, no receipt signer."""
