"""``%cc_dataset`` in the monitor: the sealed file streamed in, the key released by a real broker (in-process, over
TLS) through the kernel's relay (``kernel.relay.Relays``), the plaintext handed to the worker, the owner's rules
enforced on later requests, and each attack refused with its message. The worker and the kernel's channel are
recorders, as in test_monitor.py; the broker, the relay and the monitor's TLS are real."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from monitor_support import SESSION, attested_monitor

from cc_kernel.attestation.anchors import hardware_anchors
from cc_kernel.attestation.platforms.simulation import SimulationAuthority
from cc_kernel.attestation.policy import load_policy
from cc_kernel.audit.format import (
    ReceiptEntry,
    code_hash,
    decode_body_unverified,
    decode_payload_unverified,
    stream_digest,
)
from cc_kernel.audit.verify import verify_log
from cc_kernel.broker import server as broker_server
from cc_kernel.broker.server import serve
from cc_kernel.broker.store import BrokerStore
from cc_kernel.dataset.format import DatasetHeader, Sealer, Unsealer
from cc_kernel.dataset.release import DatasetRecord
from cc_kernel.dataset.rules import load_rules
from cc_kernel.enclave import datasets as ds_mod
from cc_kernel.kernel.relay import Relays
from cc_kernel.measure import enclave_measurement
from cc_kernel.protocol import codec
from cc_kernel.protocol import messages as m
from cc_kernel.protocol.messages import encode_message
from cc_kernel.testing.enclaves import simulation_policy_text

INSPECT = 'version = 1\nmode = "inspect"\nnot_after = 2099-01-01T00:00:00Z\nmax_sessions = 5\n'
RECORDS = b"patient,age\n" + b"".join(b"%d,%d\n" % (i, i % 90) for i in range(3000))
APPROVED_CELL = "print(len(records))"
SESSIONS: list[Session] = []


def approved_rules(*codes: str, max_sessions: int = 5) -> str:
    listed = ", ".join(f'"{code_hash(c).hex()}"' for c in codes)
    return (f'version = 1\nmode = "approved-code"\napproved_code_sha256 = [{listed}]\n'
            f"not_after = 2099-01-01T00:00:00Z\nmax_sessions = {max_sessions}\n")


@dataclass
class Sealed:
    data: bytes
    data_key: bytes
    header: DatasetHeader


def seal_into(store: BrokerStore, broker: str, *, rules: str = INSPECT, policy: str | None = None,
              plaintext: bytes = RECORDS, chunk_size: int = 4096) -> Sealed:
    """What ``cc-kernel data seal`` does, in-process: a sealed file and its record in the broker's store."""
    policy_text = policy if policy is not None else simulation_policy_text([enclave_measurement()])
    header = DatasetHeader(
        owner="St Example", dataset_id=os.urandom(16), broker=broker, broker_spki_sha256=store.spki_sha256,
        policy_sha256=load_policy(policy_text).sha256, rules_sha256=load_rules(rules).sha256, format="text",
        plaintext_size=len(plaintext), chunk_size=chunk_size)
    key = os.urandom(32)
    sealer = Sealer(header, key)
    data = sealer.header_bytes + sealer.feed(plaintext) + sealer.finish()
    store.put(DatasetRecord(dataset_id=header.dataset_id, owner=header.owner, header_sha256=sealer.header_sha256,
                            data_key=key, policy=policy_text.encode(), rules=rules.encode()))
    return Sealed(data, key, header)


class Session:
    """A monitor (recorded worker), the kernel's relay, and what crossed each link."""

    def __init__(self, authority: SimulationAuthority, *, measurement: bytes | None = None,
                 tamper: Callable[[bytes], bytes] | None = None) -> None:
        self.to_kernel: list[m.Message] = []
        self.to_worker: list[m.Message] = []
        self.relayed_in: list[bytes] = []  # what the kernel carried from the broker to the monitor
        self.changed = asyncio.Event()
        self.tamper = tamper
        self.withhold = False  # the kernel stops carrying relayed bytes (both ways)
        self.relays = Relays(self._kernel_sends)

        async def to_worker(msg: m.Message) -> None:
            self.to_worker.append(msg)
            self.changed.set()

        self.monitor = attested_monitor(authority, measurement=measurement or enclave_measurement(), channel=self,
                                        to_worker=to_worker)
        resume = self.monitor.datasets._resume

        async def resumed() -> None:  # an owner's log changed state (acknowledged, lost)
            self.changed.set()
            await resume()

        self.monitor.datasets._resume = resumed

    async def _kernel_sends(self, msg: m.Message) -> None:
        """The kernel's relay sends to the enclave (a relaying kernel may change bytes: ``tamper``)."""
        if isinstance(msg, m.RelayData):
            if self.withhold:
                return
            if self.tamper is not None:
                msg = m.RelayData(req_id=msg.req_id, data=self.tamper(msg.data))
            self.relayed_in.append(msg.data)
        await self.monitor._from_kernel(msg)  # type: ignore[attr-defined]

    async def send(self, msg: m.Message) -> None:
        """The monitor's channel to the kernel."""
        self.to_kernel.append(msg)
        if isinstance(msg, m.RelayData) and self.withhold:
            return
        if isinstance(msg, m.RelayOpen | m.RelayData | m.RelayEnd | m.DatasetKeyed):
            self.relays.handle(msg)
        if isinstance(msg, m.UploadReply):
            self.relays.answered(msg.req_id)
        self.changed.set()

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        async with asyncio.timeout(60):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def kernel_says(self, msg: m.Message) -> None:
        await self.monitor._from_kernel(msg)  # type: ignore[attr-defined]

    async def handled(self, msg: m.Message) -> m.Message:
        """Send a request and wait until the monitor answered it or handed it to the worker (it waits while an
        owner's log entry is unacknowledged); returns the answer, or the request as the worker got it."""
        req_id = getattr(msg, "req_id", None)
        await self.kernel_says(msg)

        def found() -> m.Message | None:
            for x in (*self.to_kernel, *self.to_worker):
                if getattr(x, "req_id", None) == req_id and type(x).__name__.endswith(("Reply", "Request")):
                    return x
            return None

        await self.until(lambda: found() is not None, f"request {req_id}")
        answer = found()
        assert answer is not None
        return answer

    async def worker_says(self, msg: m.Message) -> None:
        await self.monitor._from_worker(msg)  # type: ignore[attr-defined]

    def replies(self) -> list[m.Message]:
        return [x for x in self.to_kernel if isinstance(x, m.UploadReply | m.ExecuteReply | m.CompleteReply)]

    def receipts(self) -> list[ReceiptEntry]:
        return [decode_body_unverified(decode_payload_unverified(x.receipt)[0]) for x in self.to_kernel
                if isinstance(x, m.AuditReceipt)]

    async def open(self, sealed: bytes, *, req_id: int = 1, name: str = "records", gate: bool = True,
                   piece: int = 64 * 1024, worker_text: str | None = None) -> m.UploadReply:
        """Stream ``sealed`` as the kernel does (first piece, wait for the relay, the rest) and answer for the
        worker as it would; returns the enclave's verdict."""
        finished = self.relays.expect(req_id)
        await self.kernel_says(m.UploadStart(req_id=req_id, name=name, size=len(sealed), fmt="ccdata",
                                             code=f"%cc_dataset f.ccdata {name}", execution_count=req_id,
                                             cell_id=None))
        for i in range(0, len(sealed), piece):
            await self.kernel_says(m.UploadChunk(req_id=req_id, data=sealed[i : i + piece]))
            if i == 0 and gate and len(sealed) > piece:
                async with asyncio.timeout(60):
                    await finished.wait()
        await self.kernel_says(m.UploadEnd(req_id=req_id, sha256=hashlib.sha256(sealed).digest()))

        def answered() -> bool:
            return any(isinstance(x, m.UploadReply) and x.req_id == req_id for x in self.to_kernel) or any(
                isinstance(x, m.UploadEnd) and x.req_id == req_id for x in self.to_worker)

        await self.until(answered, "the verdict")
        ends = [x for x in self.to_worker if isinstance(x, m.UploadEnd) and x.req_id == req_id]
        if ends:  # the worker binds what it got, as cc_kernel.worker.serve does
            plain = b"".join(x.data for x in self.to_worker if isinstance(x, m.UploadChunk) and x.req_id == req_id)
            reader = Unsealer()
            reader.feed(sealed)
            assert isinstance(reader.next_event(), DatasetHeader)
            # the worker is given the dataset's identity, never a digest of its plaintext (a confirmation oracle)
            assert ends[0].sha256 == reader.header_sha256 != hashlib.sha256(plain).digest()
            await self.worker_says(m.UploadReply(req_id=req_id, status="ok", message=(
                f"{name} = str" if worker_text is None else worker_text)))
        return next(x for x in self.to_kernel if isinstance(x, m.UploadReply) and x.req_id == req_id)

    def plaintext_to_worker(self, req_id: int = 1) -> bytes:
        return b"".join(x.data for x in self.to_worker if isinstance(x, m.UploadChunk) and x.req_id == req_id)


@pytest.fixture
def broker(tmp_path: Path) -> BrokerStore:
    """The owner's store; ``in_loop`` serves it on a free port for the test and passes ``(store, address)``."""
    return BrokerStore(tmp_path / "store")


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in its own event loop, with the broker serving its store there (a real TLS server)."""

    @functools.wraps(test)
    def wrapper(**kwargs: Any) -> None:
        async def main() -> None:
            store: BrokerStore = kwargs["broker"]
            ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            authority: SimulationAuthority = kwargs["sim_authority"]
            task = asyncio.create_task(serve(store, "127.0.0.1:0", simulation_anchors=authority.anchors(),
                                             on_ready=ready.set_result))
            try:
                await test(**{**kwargs, "broker": (store, await ready)})
            finally:
                for session in SESSIONS:  # the session ends: owner's logs closed, relays disconnected
                    await session.monitor.datasets.aclose()
                SESSIONS.clear()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        asyncio.run(main())

    return wrapper


async def started(authority: SimulationAuthority, **kwargs: Any) -> Session:
    s = Session(authority, **kwargs)
    SESSIONS.append(s)
    await s.kernel_says(m.AuditStart(opening_hash=b"h" * 32, redact_code=False))
    return s


def execute(req_id: int, code: str) -> m.ExecuteRequest:
    return m.ExecuteRequest(req_id=req_id, code=code, silent=False, store_history=True, user_expressions={},
                            allow_stdin=False, execution_count=req_id, cell_id=None, kind="cell")


def broker_log(store: BrokerStore) -> str:
    return (store.directory / "broker.log").read_text()


# --- the way it works ---------------------------------------------------------------------------------------


@in_loop
async def test_a_sealed_dataset_is_released_through_the_relay_and_the_worker_gets_only_plaintext(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority,
) -> None:
    store, address = broker
    sealed, s, reply = await attempt(broker, sim_authority)
    assert reply.status == "ok", reply.message
    assert "mode inspect, release 1 of 5" in reply.message
    start = next(x for x in s.to_worker if isinstance(x, m.UploadStart))
    assert (start.fmt, start.size, start.name) == ("text", len(RECORDS), "records")  # never "ccdata"
    assert s.plaintext_to_worker() == RECORDS
    # the worker, where cells run, never gets the data key or the sealed bytes: a cell has nothing to read them from
    to_worker = b"".join(codec.packb(encode_message(x)) for x in s.to_worker)
    assert sealed.data_key not in to_worker and sealed.data[-64:] not in to_worker
    # the kernel carried the exchange but saw neither the key nor the plaintext
    assert any(isinstance(x, m.RelayOpen) and x.address == address for x in s.to_kernel)
    carried = b"".join(s.relayed_in) + b"".join(x.data for x in s.to_kernel if isinstance(x, m.RelayData))
    assert carried and sealed.data_key not in carried and b"patient,age" not in carried
    assert not any(b"patient,age" in getattr(x, "data", b"") for x in s.to_kernel)
    # the receipt records the sealed file the monitor received; the dataset is open under its rules
    (entry,) = s.receipts()
    assert entry.kind == "upload" and entry.status == "ok" and entry.upload is not None
    assert entry.upload.fmt == "ccdata" and entry.upload.sha256 == hashlib.sha256(sealed.data).digest()
    (opened,) = s.monitor.datasets.open
    assert (opened.name, opened.owner, opened.rules.mode, opened.session) == ("records", "St Example", "inspect", 1)
    (info,) = [x for x in s.to_kernel if isinstance(x, m.DatasetInfo)]  # for the badge
    assert [(d["name"], d["mode"], d["owner_log"]) for d in info.datasets] == [("records", "inspect", "open")]
    assert '"verdict":"released"' in broker_log(store)


@in_loop
async def test_a_small_file_sent_whole_before_the_key_is_opened_once_the_key_arrives(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority,
) -> None:
    _, s, reply = await attempt(broker, sim_authority, piece=1 << 20)  # header, body and end before any key
    assert reply.status == "ok", reply.message
    assert s.plaintext_to_worker() == RECORDS


@in_loop
async def test_chunks_larger_than_the_workers_pieces_are_handed_in_as_pieces_in_order(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority,
) -> None:
    plaintext = os.urandom(5 * ds_mod.WORKER_PIECE + 12345)
    _, s, reply = await attempt(broker, sim_authority, piece=1 << 20, plaintext=plaintext,
                                chunk_size=2 * ds_mod.WORKER_PIECE + 7)  # 3 chunks
    assert reply.status == "ok", reply.message
    pieces = [len(x.data) for x in s.to_worker if isinstance(x, m.UploadChunk)]
    assert max(pieces) == ds_mod.WORKER_PIECE and len(pieces) == 8  # each chunk cut into 1 MiB pieces (3 + 3 + 2)
    assert s.plaintext_to_worker() == plaintext


@in_loop
async def test_the_owners_rules_end_the_reply_however_long_the_workers_text(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority,
) -> None:
    _, _, s = await opened(broker, sim_authority, worker_text="w" * m.MAX_REASON)
    reply = next(x for x in s.to_kernel if isinstance(x, m.UploadReply))
    assert len(reply.message) <= m.MAX_REASON
    assert reply.message.startswith("www") and "; dataset of 'St Example' under the owner's rules: mode inspect" \
        in reply.message and reply.message.endswith("until 2099-01-01T00:00:00+00:00")


# --- the owner's rules --------------------------------------------------------------------------------------


@in_loop
async def test_approved_code_refuses_an_unapproved_cell_before_the_worker_and_names_its_digest(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority,
) -> None:
    store, address = broker
    sealed = seal_into(store, address, rules=approved_rules(APPROVED_CELL))
    s = await started(sim_authority)
    assert (await s.open(sealed.data)).status == "ok"
    before = len(s.to_worker)
    bad = "print(records)"
    reply = await s.handled(execute(2, bad))
    assert len(s.to_worker) == before  # it never reached the worker
    assert isinstance(reply, m.ExecuteReply) and reply.status == "error" and reply.ename == "DatasetRules"
    assert code_hash(bad).hex() in reply.evalue and "approved-code" in reply.evalue
    shown = next(x for x in s.to_kernel if isinstance(x, m.Error))
    assert code_hash(bad).hex() in shown.evalue
    assert s.receipts()[-1].kind == "cell" and s.receipts()[-1].status == "error"
    # one byte off the approved code is another digest, refused the same way
    reply = await s.handled(execute(3, APPROVED_CELL + " "))
    assert isinstance(reply, m.ExecuteReply) and reply.ename == "DatasetRules" and len(s.to_worker) == before
    # completions and inspections (which could show the data) are refused too
    reply = await s.handled(m.InspectRequest(req_id=4, code="records", cursor_pos=7, detail_level=0))
    assert isinstance(reply, m.InspectReply) and reply.status == "error" and len(s.to_worker) == before
    # the approved cell runs
    handed = await s.handled(execute(5, APPROVED_CELL))
    assert isinstance(handed, m.ExecuteRequest) and handed.code == APPROVED_CELL


@in_loop
async def test_approved_code_is_not_opened_into_a_session_where_unapproved_code_ran(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority,
) -> None:
    store, address = broker
    sealed = seal_into(store, address, rules=approved_rules(APPROVED_CELL))
    s = await started(sim_authority)
    hook = "import builtins; builtins.leak = print"
    await s.kernel_says(execute(1, hook))
    await s.worker_says(m.ExecuteReply(req_id=1, status="ok", execution_count=1, user_expressions={}, payload=[],
                                       ename="", evalue="", traceback=[]))
    reply = await s.open(sealed.data, req_id=2)
    assert reply.status == "error"
    assert "no unapproved code ran before" in reply.message and code_hash(hook).hex() in reply.message
    assert s.plaintext_to_worker(2) == b"" and s.monitor.datasets.open == []


@in_loop
async def test_an_expired_dataset_gets_no_key(broker: tuple[BrokerStore, str],
                                              sim_authority: SimulationAuthority) -> None:
    _, s, reply = await attempt(broker, sim_authority, rules=INSPECT.replace("2099-01-01", "2020-01-01"))
    assert reply.status == "error" and "expired at 2020-01-01" in reply.message
    assert s.plaintext_to_worker() == b""
    assert '"check":"rules.not_after"' in broker_log(broker[0])


@in_loop
async def test_max_sessions_is_counted_by_the_broker(broker: tuple[BrokerStore, str],
                                                    sim_authority: SimulationAuthority) -> None:
    store, address = broker
    sealed = seal_into(store, address, rules=INSPECT.replace("max_sessions = 5", "max_sessions = 1"))
    assert (await (await started(sim_authority)).open(sealed.data)).status == "ok"
    reply = await (await started(sim_authority)).open(sealed.data)
    assert reply.status == "error" and "released 1 times, its owner allows 1" in reply.message


# --- attacks ------------------------------------------------------------------------------------------------


@in_loop
async def test_an_enclave_outside_the_owners_policy_gets_no_key(broker: tuple[BrokerStore, str],
                                                               sim_authority: SimulationAuthority) -> None:
    _, s, reply = await attempt(broker, sim_authority, measurement=b"\x66" * 48)  # a modified enclave
    assert reply.status == "error" and "does not meet the owner's policy" in reply.message
    assert s.plaintext_to_worker() == b"" and not any(isinstance(x, m.UploadStart) for x in s.to_worker)
    assert '"check":"release.policy"' in broker_log(broker[0])


@pytest.mark.parametrize(
    ("where", "expect"),
    [
        ("header", "dataset.header"),  # the broker recorded another header hash
        ("chunk", "does not authenticate"),
        ("last", "does not authenticate"),
    ],
)
@in_loop
async def test_a_tampered_sealed_file_is_refused_and_nothing_is_bound(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority, where: str, expect: str,
) -> None:
    store, address = broker
    sealed = seal_into(store, address)
    data = bytearray(sealed.data)
    size = len(sealed.data)
    at = {"header": sealed.data.index(b"St Example"), "chunk": size // 2, "last": size - 1}[where]
    data[at] ^= 1
    s = await started(sim_authority)
    reply = await s.open(bytes(data))
    assert reply.status == "error" and expect in reply.message, reply.message
    assert not any(isinstance(x, m.UploadEnd) for x in s.to_worker)  # the worker binds nothing
    assert s.monitor.datasets.open == []


@in_loop
async def test_a_truncated_sealed_file_is_refused(broker: tuple[BrokerStore, str],
                                                 sim_authority: SimulationAuthority) -> None:
    store, address = broker
    sealed = seal_into(store, address)
    s = await started(sim_authority)
    reply = await s.open(sealed.data[:-100])
    assert reply.status == "error" and "cut short" in reply.message
    assert not any(isinstance(x, m.UploadEnd) for x in s.to_worker)


@in_loop
async def test_a_kernel_that_changes_relayed_bytes_breaks_the_exchange(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority,
) -> None:
    store, address = broker
    sealed = seal_into(store, address)

    def flip(data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1])

    s = await started(sim_authority, tamper=flip)
    reply = await s.open(sealed.data)
    assert reply.status == "error" and "did not release the key" in reply.message
    assert s.plaintext_to_worker() == b""


@in_loop
async def test_a_broker_with_another_key_is_not_the_owners(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority, tmp_path: Path,
) -> None:
    _, address = broker
    other = BrokerStore(tmp_path / "other")
    sealed = seal_into(other, address)  # pins the other broker's key, but the relay reaches this one
    s = await started(sim_authority)
    reply = await s.open(sealed.data)
    assert reply.status == "error" and "its TLS key differs" in reply.message


@in_loop
async def test_a_broker_that_is_gone_releases_nothing(broker: tuple[BrokerStore, str],
                                                      sim_authority: SimulationAuthority) -> None:
    store, _ = broker
    sealed = seal_into(store, "127.0.0.1:9")  # nothing listens there
    s = await started(sim_authority)
    reply = await s.open(sealed.data)
    assert reply.status == "error" and "did not release the key" in reply.message
    relay_end = next(x for x in s.to_kernel if isinstance(x, m.RelayEnd))
    assert relay_end.req_id == 1


@in_loop
async def test_a_kernel_that_sends_the_body_before_the_key_is_bounded(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ds_mod, "MAX_AHEAD", 8192)
    *_, reply = await attempt(broker, sim_authority, gate=False, piece=4096)
    assert reply.status == "error" and "before the key was released" in reply.message


# --- the owner's log ----------------------------------------------------------------------------------------


async def attempt(broker: tuple[BrokerStore, str], authority: SimulationAuthority, *,
                  measurement: bytes | None = None, piece: int = 64 * 1024, gate: bool = True,
                  worker_text: str | None = None, **sealing: Any) -> tuple[Sealed, Session, m.UploadReply]:
    """Seal a dataset (``sealing``: ``seal_into``'s options), start a session (``measurement``: its enclave's)
    and open the file in it as the kernel streams it; the verdict is the caller's to check."""
    store, address = broker
    sealed = seal_into(store, address, **sealing)
    s = await started(authority, measurement=measurement)
    reply = await s.open(sealed.data, piece=piece, gate=gate, worker_text=worker_text)
    return sealed, s, reply


async def opened(broker: tuple[BrokerStore, str], authority: SimulationAuthority, *, rules: str = INSPECT,
                 worker_text: str | None = None) -> tuple[BrokerStore, Sealed, Session]:
    """A session with a dataset sealed under ``rules`` open in it (the worker answering ``worker_text``)."""
    sealed, s, reply = await attempt(broker, authority, rules=rules, worker_text=worker_text)
    assert reply.status == "ok", reply.message
    return broker[0], sealed, s


def owner_log_file(store: BrokerStore, sealed: Sealed, release: int = 1) -> bytes:
    return (store.directory / f"{sealed.header.dataset_id.hex()}-{release}.cclog").read_bytes()


@in_loop
async def test_every_request_while_open_is_in_the_owners_log_which_verifies_like_a_session_log(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority,
) -> None:
    store, sealed, s = await opened(broker, sim_authority)
    handed = await s.handled(execute(2, "print(records[:11])"))
    assert isinstance(handed, m.ExecuteRequest)
    await s.worker_says(m.Stream(req_id=2, name="stdout", text="patient,age\n"))
    await s.worker_says(m.ExecuteReply(req_id=2, status="ok", execution_count=2, user_expressions={}, payload=[],
                                       ename="", evalue="", traceback=[]))
    await s.handled(execute(3, "x = 1"))  # waits for the owner's acknowledgement of cell 2's receipt
    await s.monitor._close_log("shutdown")  # type: ignore[attr-defined]
    report = verify_log(owner_log_file(store, sealed), policy=None, anchors=hardware_anchors(),
                        simulation_anchors=sim_authority.anchors(), now=datetime.now(UTC))
    assert report.status == "valid", report.findings
    receipts = [entry for _, entry in report.receipts()]
    assert [r.kind for r in receipts] == ["upload", "cell"]
    assert receipts[0].upload is not None and receipts[0].upload.fmt == "ccdata"
    assert receipts[1].code == "print(records[:11])"
    assert dict(receipts[1].streams) == {"stdout": stream_digest("stdout", hashlib.sha256(b"patient,age\n").digest())}
    assert report.opening is not None and report.opening.session_id != SESSION  # the owner's own log session
    assert '"state":"opened"' in broker_log(store) and '"state":"closed by the enclave"' in broker_log(store)


@in_loop
async def test_a_session_that_loses_the_broker_runs_nothing_more(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority,
) -> None:
    store, sealed, s = await opened(broker, sim_authority)
    s.relays.close()  # the kernel drops the broker connection
    await s.until(lambda: s.monitor.datasets.open[0].owner_log.lost is not None,  # type: ignore[union-attr]
                  "the log is lost")
    before = len(s.to_worker)
    reply = await s.handled(execute(2, "print(records)"))
    assert isinstance(reply, m.ExecuteReply) and reply.status == "error"
    assert "owner's log of dataset 'records' (St Example) is lost" in reply.evalue
    assert "Restart the kernel" in reply.evalue and len(s.to_worker) == before
    info = [x for x in s.to_kernel if isinstance(x, m.DatasetInfo)][-1]  # the badge says so
    assert info.datasets[0]["owner_log"].startswith("lost: the connection to the owner's broker was lost")
    report = verify_log(owner_log_file(store, sealed), policy=None, anchors=hardware_anchors(),
                        simulation_anchors=sim_authority.anchors(), now=datetime.now(UTC))
    assert report.status == "unterminated"  # what the owner sees: the log ends without its closing entry


@in_loop
async def test_a_kernel_that_withholds_the_owners_log_stops_the_session_using_the_dataset(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, _, s = await opened(broker, sim_authority)
    await s.handled(execute(2, "x = 1"))  # the upload's receipt was acknowledged
    monkeypatch.setattr(ds_mod, "ACK_TIMEOUT", 0.2)
    s.withhold = True  # the kernel stops carrying bytes, without closing anything
    await s.worker_says(m.ExecuteReply(req_id=2, status="ok", execution_count=2, user_expressions={}, payload=[],
                                       ename="", evalue="", traceback=[]))
    reply = await s.handled(execute(3, "print(records)"))
    assert isinstance(reply, m.ExecuteReply) and reply.status == "error"
    assert "did not acknowledge a log entry within 0.2 s" in reply.evalue


@in_loop
async def test_a_change_in_any_chunk_is_refused_naming_it_and_the_owner_is_told(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority,
) -> None:
    store, address = broker
    sealed = seal_into(store, address, rules=INSPECT.replace("max_sessions = 5", "max_sessions = 100"))
    header_size = len(sealed.data) - len(RECORDS) - 16 * sealed.header.chunks
    for index in range(sealed.header.chunks):
        data = bytearray(sealed.data)
        data[header_size + index * (4096 + 16) + 7] ^= 0x80
        s = await started(sim_authority)
        reply = await s.open(bytes(data))
        assert reply.status == "error" and f"chunk {index} of {sealed.header.chunks} does not authenticate" in \
            reply.message, (index, reply.message)
        assert not any(isinstance(x, m.UploadEnd) for x in s.to_worker)
        report = verify_log(owner_log_file(store, sealed, release=index + 1), policy=None, anchors=hardware_anchors(),
                            simulation_anchors=sim_authority.anchors(), now=datetime.now(UTC))
        assert report.status == "valid" and report.closing is not None
        assert f"the dataset was not opened: [dataset.chunk] chunk {index} of" in report.closing.reason


@in_loop
async def test_a_kernel_replaying_a_recorded_broker_exchange_gets_no_key(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority,
) -> None:
    store, address = broker
    sealed = seal_into(store, address)
    first = await started(sim_authority)
    assert (await first.open(sealed.data)).status == "ok"
    recorded = list(first.relayed_in)  # what the broker sent the first monitor, as the kernel carried it
    replayed = iter(recorded)

    def replay(data: bytes) -> bytes:  # the kernel answers the second monitor with the recorded bytes
        return next(replayed, data)

    second = await started(sim_authority, tamper=replay)
    reply = await second.open(sealed.data)
    assert reply.status == "error" and "did not release the key" in reply.message
    assert second.plaintext_to_worker() == b""


@pytest.fixture
def quiet_broker(monkeypatch: pytest.MonkeyPatch) -> list[socket.socket]:
    """The broker of ``in_loop`` ends an owner's log silent for 2 s; returns the sockets it switched keepalive on."""
    monkeypatch.setattr(broker_server, "OWNER_LOG_IDLE_S", 2.0)
    kept: list[socket.socket] = []
    real = broker_server.keep_alive

    def recording(sock: socket.socket) -> None:
        real(sock)
        kept.append(sock)

    monkeypatch.setattr(broker_server, "keep_alive", recording)
    return kept


@in_loop
async def test_a_silent_owners_log_is_ended_by_the_broker_and_the_session_stops_using_the_dataset(
    broker: tuple[BrokerStore, str], sim_authority: SimulationAuthority, quiet_broker: list[socket.socket],
) -> None:
    store, sealed, s = await opened(broker, sim_authority)
    live = [sock for sock in quiet_broker if sock.fileno() != -1]
    assert live and all(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1 for sock in live)
    assert live[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == broker_server.KEEPALIVE_IDLE_S
    # the session sends nothing more: the broker ends the owner's log, and the monitor notices
    await s.until(lambda: s.monitor.datasets.open[0].owner_log.lost is not None,  # type: ignore[union-attr]
                  "the log is lost")
    assert ('"state":"ended without its closing entry: the release connection broke: nothing arrived for 2 s"'
            in broker_log(store)), broker_log(store)
    before = len(s.to_worker)
    reply = await s.handled(execute(2, "print(records)"))
    assert isinstance(reply, m.ExecuteReply) and reply.status == "error"
    assert "owner's log of dataset 'records' (St Example) is lost" in reply.evalue and len(s.to_worker) == before
    report = verify_log(owner_log_file(store, sealed), policy=None, anchors=hardware_anchors(),
                        simulation_anchors=sim_authority.anchors(), now=datetime.now(UTC))
    assert report.status == "unterminated"


def test_keep_alive_sets_the_brokers_probe_timings() -> None:
    with socket.socket() as sock:
        broker_server.keep_alive(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == broker_server.KEEPALIVE_IDLE_S
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == broker_server.KEEPALIVE_INTERVAL_S
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == broker_server.KEEPALIVE_COUNT
