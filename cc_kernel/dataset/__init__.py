"""Pure dataset layer: sealed files, the owner's rules, the key-release exchange and the broker's log format.

No I/O, no clock, no randomness: the broker (``cc_kernel.broker``) and the monitor do those and call in here.
"""
