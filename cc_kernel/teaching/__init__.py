"""Teaching: a small, real lab for the teaching notebooks — enclaves with faults, attestation, wiretaps.

Layer: a user-facing helper above ``channel``, ``attestation``, ``simstore``, ``labkit`` and the kernelspecs; it
does I/O (processes, sockets, temporary files) and is used by neither the kernel nor the enclave. One module per
concept:

- ``lab``: ``TeachingLab``, the private, throw-away lab that owns everything below and cleans it up;
- ``enclaves``: the faults it can switch on, its enclave servers (and the data owner's broker), the replay
  impostor;
- ``recording``: what a man in the middle saw — the lab's ``Relay`` and ``Wiretap``, with views;
- ``kernels``: ``LabKernel``, a real Jupyter kernel the lab drives;
- ``outcomes``: ``AttestOutcome``, ``EvidenceExchange``, ``CellRun``;
- ``explain``: a report's fields, an envelope's chain, the protocol as a diagram;
- ``display``: hex dumps, panels, tables;
- ``loop``: the background event loop the lab's relays and kernel clients run on.

Invariants: nothing is mocked (see ``lab``); refusals carry the kernel's own advice (``kernel.advice``); the
relay, the TLS-record walker and the process stopper are ``labkit``'s, shared with the test harness.

Typical use in a notebook::

    from cc_kernel.teaching import TeachingLab
    lab = TeachingLab()
    policy = lab.policy(min_tcb=lab.tcb)        # pin the real measurement and today's TCB
    address = lab.start_enclave(fault="debug")  # a real enclave server with one fault switched on
    lab.attest(address, policy=policy)          # the refusal: exception, check, message, got/expected, advice
"""

from __future__ import annotations

from cc_kernel.labkit.relay import Chunk, Direction, Flip, Tampering
from cc_kernel.labkit.tls import TLS_CONTENT_TYPES, TlsRecord, tls_records
from cc_kernel.teaching.display import Diagram, Panels, Table, hexdump, side_by_side
from cc_kernel.teaching.enclaves import ENCLAVE_FAULTS, FAULTS, MODIFIED_FILE, MODIFIED_LINE
from cc_kernel.teaching.explain import attestation_diagram, describe_chain, describe_report
from cc_kernel.teaching.kernels import LabKernel
from cc_kernel.teaching.lab import TeachingLab
from cc_kernel.teaching.outcomes import AttestOutcome, CellRun, EvidenceExchange
from cc_kernel.teaching.recording import Recording, Relay, Wiretap

__all__ = [
    "ENCLAVE_FAULTS",
    "FAULTS",
    "MODIFIED_FILE",
    "MODIFIED_LINE",
    "TLS_CONTENT_TYPES",
    "AttestOutcome",
    "CellRun",
    "Chunk",
    "Diagram",
    "Direction",
    "EvidenceExchange",
    "Flip",
    "LabKernel",
    "Panels",
    "Recording",
    "Relay",
    "Table",
    "Tampering",
    "TeachingLab",
    "TlsRecord",
    "Wiretap",
    "attestation_diagram",
    "describe_chain",
    "describe_report",
    "hexdump",
    "side_by_side",
    "tls_records",
]
