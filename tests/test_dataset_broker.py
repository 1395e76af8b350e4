"""The data owner's broker: `cc-kernel data seal`, `cc-kernel broker serve` as a subprocess, a release over TLS
to a simulated enclave, unsealing with the released key, the store's permissions and the broker's signed log."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cc_kernel.attestation.envelope import encode_envelope
from cc_kernel.attestation.platforms.simulation import SimulationAuthority
from cc_kernel.audit.format import code_hash
from cc_kernel.broker.client import request_key
from cc_kernel.broker.store import BrokerStore
from cc_kernel.crypto.sealing import SigningKey
from cc_kernel.dataset.brokerlog import BrokerLogWriter, verify_broker_log
from cc_kernel.dataset.format import NEED_DATA, ChunkData, DatasetHeader, Unsealer
from cc_kernel.enclave.evidence import SimulatedSource
from cc_kernel.errors import ConfigError, LogVerificationError, ReleaseRefused, WrongBroker
from cc_kernel.measure import enclave_measurement
from cc_kernel.simstore import simulation_dir
from cc_kernel.testing.enclaves import enclave_env, running_broker, simulation_policy_text

RULES = 'version = 1\nmode = "inspect"\nnot_after = 2099-01-01T00:00:00Z\nmax_sessions = 2\n'
REQUESTER = b"\x09" * 32


def cc_kernel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "cc_kernel", *args], capture_output=True, text=True, timeout=120,
                          env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def owner(tmp_path: Path) -> Path:
    (tmp_path / "policy.toml").write_text(simulation_policy_text([enclave_measurement()]))
    (tmp_path / "rules.toml").write_text(RULES)
    (tmp_path / "records.csv").write_bytes(b"patient,age\n" + b"".join(b"%d,%d\n" % (i, i % 90) for i in range(50000)))
    return tmp_path


def seal(owner: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return cc_kernel("data", "seal", str(owner / "records.csv"), "--owner-policy", str(owner / "policy.toml"),
                     "--rules", str(owner / "rules.toml"), "--broker", "127.0.0.1:7900", "--datasets",
                     str(owner / "store"), "-o", str(owner / "records.ccdata"), "--owner", "St Example", *extra)


@pytest.fixture
def broker(owner: Path, cc_data_dir: Path) -> Iterator[str]:
    """``cc-kernel broker serve`` on a free port; yields its address once it printed that it listens."""
    assert seal(owner).returncode == 0
    with running_broker(owner / "store", sim_dir=simulation_dir(cc_data_dir), env=enclave_env(cc_data_dir)) as addr:
        yield addr


def read_header(path: Path) -> tuple[DatasetHeader, bytes]:
    u = Unsealer()
    u.feed(path.read_bytes()[:8192])
    event = u.next_event()
    assert isinstance(event, DatasetHeader)
    return event, u.header_sha256


def collector(source: SimulatedSource):  # type: ignore[no-untyped-def]
    async def collect(report_data: bytes, release_pub: bytes, dataset_id: bytes, nonce: bytes) -> bytes:
        env = source.collect(report_data, audit_pub=release_pub, session_id=dataset_id, nonce=nonce)
        return encode_envelope(env)
    return collect


def test_seal_store_and_file(owner: Path) -> None:
    proc = seal(owner)
    assert proc.returncode == 0, proc.stderr
    assert "the data key is in" in proc.stdout
    store = owner / "store"
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    for f in store.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    header, _ = read_header(owner / "records.ccdata")
    assert header.format == "text"
    assert header.owner == "St Example"
    assert header.broker_spki_sha256 == BrokerStore(store).spki_sha256
    record = BrokerStore(store).get(header.dataset_id)
    assert record is not None
    assert record.data_key not in (owner / "records.ccdata").read_bytes()


def test_seal_refuses_bad_rules(owner: Path) -> None:
    (owner / "rules.toml").write_text(RULES + "extra = 1\n")
    proc = seal(owner)
    assert proc.returncode == 1
    assert "unknown key(s) ['extra']" in proc.stderr
    assert not (owner / "records.ccdata").exists()


def test_store_must_be_private(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    with pytest.raises(ConfigError, match="must be private"):
        BrokerStore(d)


def test_seal_release_unseal_over_a_real_broker(owner: Path, broker: str, sim_authority: SimulationAuthority) -> None:
    header, header_sha256 = read_header(owner / "records.ccdata")
    source = SimulatedSource(sim_authority, enclave_measurement())
    released = asyncio.run(request_key(broker, header, header_sha256, collect=collector(source),
                                       requester_spki_sha256=REQUESTER))
    assert released.session == 1
    u = Unsealer(released.data_key)
    plain = bytearray()
    with (owner / "records.ccdata").open("rb") as f:
        while block := f.read(65536):
            u.feed(block)
            while (event := u.next_event()) is not NEED_DATA:
                if isinstance(event, ChunkData):
                    plain += event.data
    u.end()
    assert bytes(plain) == (owner / "records.csv").read_bytes()

    # a debug enclave is refused by the owner's policy (and not counted)
    debug = SimulatedSource(sim_authority, enclave_measurement(), faults=frozenset({"debug"}))
    with pytest.raises(ReleaseRefused, match="does not meet the owner's policy") as refused:
        asyncio.run(request_key(broker, header, header_sha256, collect=collector(debug),
                                requester_spki_sha256=REQUESTER))
    assert refused.value.check == "release.policy"

    # max_sessions = 2: the second release is granted, the third refused, and says so
    again = asyncio.run(request_key(broker, header, header_sha256, collect=collector(source),
                                    requester_spki_sha256=REQUESTER))
    assert (again.session, again.data_key) == (2, released.data_key)
    with pytest.raises(ReleaseRefused, match="released 2 times, its owner allows 2") as info:
        asyncio.run(request_key(broker, header, header_sha256, collect=collector(source),
                                requester_spki_sha256=REQUESTER))
    assert info.value.check == "rules.max_sessions"

    # the broker's log: every request, verdict and release, signed and chained
    proc = cc_kernel("broker", "verify-log", "--datasets", str(owner / "store"))
    assert proc.returncode == 0, proc.stderr
    events = [line.split()[2] for line in proc.stdout.splitlines()[:-1]]
    assert [e for e in events if e != "owner-log"] == ["start", "request", "verdict", "release", "request",
                                                       "verdict", "request", "verdict", "release", "request",
                                                       "verdict"]
    # a requester that took the key without opening the owner's log (as a monitor does) is on record
    assert events.count("owner-log") == 2 and proc.stdout.count("state=never opened") == 2
    assert "check=release.policy" in proc.stdout
    assert "verdict=released" in proc.stdout
    assert "check=rules.max_sessions" in proc.stdout
    log = (owner / "store" / "broker.log").read_bytes()
    assert released.data_key.hex().encode() not in log

    # a tampered log is refused with the line that changed
    tampered = log.replace(b'"verdict":"refused"', b'"verdict":"released"', 1)
    (owner / "tampered.log").write_bytes(tampered)
    proc = cc_kernel("broker", "verify-log", "--datasets", str(owner / "store"), "--log", str(owner / "tampered.log"))
    assert proc.returncode == 1
    changed = next(i for i, line in enumerate(log.splitlines()) if b'"verdict":"refused"' in line)
    assert f"INVALID: [brokerlog.signature] line {changed} is not signed by this broker's log key" in proc.stderr


def test_wrong_broker_refused_before_any_request(owner: Path, broker: str, sim_authority: SimulationAuthority,
                                                 tmp_path: Path) -> None:
    """A file sealed to another broker's key: the client stops at the TLS key check."""
    header, header_sha256 = read_header(owner / "records.ccdata")
    other = DatasetHeader(**{**header.__dict__, "broker_spki_sha256": BrokerStore(tmp_path / "other").spki_sha256})
    source = SimulatedSource(sim_authority, enclave_measurement())
    with pytest.raises(WrongBroker, match="its TLS key differs") as info:
        asyncio.run(request_key(broker, other, header_sha256, collect=collector(source),
                                requester_spki_sha256=REQUESTER))
    assert info.value.check == "broker.key"


def test_approve_prints_the_receipt_digests(tmp_path: Path) -> None:
    nb = {"cells": [{"cell_type": "markdown", "source": "# hi"},
                    {"cell_type": "code", "source": ["import pandas as pd\n", "df = pd.read_csv(data)"]},
                    {"cell_type": "code", "source": "df.describe()"}],
          "nbformat": 4, "nbformat_minor": 5, "metadata": {}}
    (tmp_path / "a.ipynb").write_text(json.dumps(nb))
    proc = cc_kernel("data", "approve", str(tmp_path / "a.ipynb"))
    assert proc.returncode == 0, proc.stderr
    first = code_hash("import pandas as pd\ndf = pd.read_csv(data)").hex()
    assert f'"{first}",  # cell 1: import pandas as pd' in proc.stdout
    assert f'"{code_hash("df.describe()").hex()}",  # cell 2: df.describe()' in proc.stdout


# --- the log format on its own ----------------------------------------------------------------------------------


def make_log(n: int = 4) -> tuple[bytes, bytes]:
    key = SigningKey()
    w = BrokerLogWriter(key.sign)
    lines = [w.line("request", {"dataset": "00" * 16, "i": i}, time="2026-01-01T00:00:00.000Z") for i in range(n)]
    return b"".join(lines), key.public_bytes


def test_log_verifies() -> None:
    data, pub = make_log()
    entries = verify_broker_log(data, public_key=pub)
    assert [e.data["i"] for e in entries] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("mutate", "check", "index"),
    [
        (lambda ls: [ls[0], ls[2], ls[3]], "brokerlog.seq", 1),  # an entry removed
        (lambda ls: [ls[1], ls[0], ls[2], ls[3]], "brokerlog.seq", 0),  # reordered
        (lambda ls: [ls[0], ls[1], ls[2], ls[3][:-1]], "brokerlog.truncated", 3),  # cut mid-line
        (lambda ls: [ls[0], ls[1].replace(b'"i":1', b'"i":7'), ls[2], ls[3]], "brokerlog.signature", 1),
        (lambda ls: [ls[0], ls[1].replace(b'{"data"', b'{ "data"'), ls[2], ls[3]], "brokerlog.decode", 1),
    ],
)
def test_tampered_log_refused(mutate, check: str, index: int) -> None:  # type: ignore[no-untyped-def]
    data, pub = make_log()
    lines = [line + b"\n" for line in data.split(b"\n")[:-1]]
    with pytest.raises(LogVerificationError) as info:
        verify_broker_log(b"".join(mutate(lines)), public_key=pub)
    assert (info.value.check, info.value.index) == (check, index)


def test_log_of_another_key_refused() -> None:
    data, _ = make_log()
    with pytest.raises(LogVerificationError, match="line 0 is not signed by this broker's log key"):
        verify_broker_log(data, public_key=SigningKey().public_bytes)


def test_forged_chain_refused() -> None:
    """A log rebuilt by someone with another key but the same content does not verify under the owner's key."""
    _, pub = make_log(2)
    forged = BrokerLogWriter(SigningKey().sign)
    lines = [forged.line("request", {"dataset": "00" * 16, "i": i}, time="2026-01-01T00:00:00.000Z")
             for i in range(2)]
    with pytest.raises(LogVerificationError) as info:
        verify_broker_log(b"".join(lines), public_key=pub)
    assert info.value.check == "brokerlog.signature"
