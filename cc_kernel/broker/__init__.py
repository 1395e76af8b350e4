"""I/O: the data owner's key broker — its store of data keys, its signed log, its TLS server, and the client
side of the release exchange. The decisions are made by the pure ``cc_kernel.dataset.release``."""
