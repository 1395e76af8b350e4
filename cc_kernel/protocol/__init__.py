"""Pure protocol layer: the sans-IO wire protocol between the kernel and the enclave (no sockets, no clock).

Layers, bottom up: ``codec`` (the only msgpack call site), ``messages`` (strictly validated dataclasses),
``framing`` (length-prefixed frames, incremental decoder), ``flow`` (what an output costs in credit),
``connection`` (the state machine as a table, and the output window); ``privsep`` holds the monitor <-> worker
message sets on the same frames.

Every name is imported from the submodule that owns it (``from cc_kernel.protocol import messages as m``); the
package itself imports nothing, so importing one submodule (``codec`` for the evidence envelope) does not
build the message registry and the state machine, which keeps the enclave's start-up short.
"""
