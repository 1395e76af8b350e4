"""Benchmark: ``%cc_dataset`` of a sealed file into the worker's namespace, end to end, in MiB/s.

Usage::

    python benchmarks/dataset_open.py [--mib N] [--rounds R] [--json PATH]

The data owner's side runs here: ``cc-kernel data seal`` seals N MiB of random bytes (default 1024) to a
simulation policy pinning this installation's enclave, and ``cc-kernel broker serve`` serves its key. A fresh
``confidential-python-sim`` kernel (as ``benchmarks/upload.py``) opens it: the kernel streams the sealed file to
the monitor, the monitor obtains the key through the kernel's relay (release exchange and the owner's log
opening), decrypts each chunk and hands the plaintext to the worker, which binds it as ``bytes``. Timed from the
``execute_request`` to its ``execute_reply``; one warm-up first; the median over rounds is reported. Each round
is one release (the rules allow rounds + 1) and one owner's log. The target is >= 200 MiB/s. Each round also
reports the CPU seconds per GiB of the kernel, the monitor, the worker and the broker (``/proc/PID/stat``), which
stay meaningful on a loaded machine where wall time does not.

Each session then opens a second, 1 KiB dataset: its time is what the user waits for the broker exchange as
``%cc_dataset`` runs it — the relay through the kernel, TLS to the broker, the release exchange and the opening
of the owner's log (a second evidence and appraisal), then one chunk (target for the exchange: < 50 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel import Bench, private_jupyter_env, repin
from machine import git_state, wait_quiet
from upload import CONF, TARGET_MIB_S, upload_once

from cc_kernel.measure import enclave_measurement
from cc_kernel.simstore import load_or_create_authority, simulation_dir
from cc_kernel.testing.enclaves import running_broker, simulation_policy_text


def seal(work: Path, mib: int, sessions: int, broker: str, *, size: int | None = None) -> Path:
    """Seal ``mib`` MiB (or ``size`` bytes) of random bytes for ``broker`` into ``work``; returns the sealed file."""
    plain = work / "records.bin"
    with plain.open("wb") as out:
        if size is not None:
            out.write(os.urandom(size))
        for _ in range(mib if size is None else 0):
            out.write(os.urandom(1024 * 1024))
    (work / "policy.toml").write_text(simulation_policy_text([enclave_measurement()]))
    (work / "rules.toml").write_text('version = 1\nmode = "inspect"\nnot_after = 2099-01-01T00:00:00Z\n'
                                     f"max_sessions = {sessions}\n")
    sealed = work / (f"records-{mib}-mib.ccdata" if size is None else f"records-{size}-bytes.ccdata")
    subprocess.run([sys.executable, "-m", "cc_kernel", "data", "seal", str(plain), "--owner-policy",
                    str(work / "policy.toml"), "--rules", str(work / "rules.toml"), "--broker", broker,
                    "--datasets", str(work / "store"), "-o", str(sealed), "--format", "bytes"],
                   check=True, capture_output=True)
    plain.unlink()
    return sealed


def broker_cpu() -> float:
    """CPU seconds used so far by this benchmark's broker (the one ``cc-kernel broker serve`` child of ours)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"broker" in cmdline and b"serve" in cmdline and int(fields[1]) == os.getpid():
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024, help="size of the dataset in MiB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-busy", type=float, default=0.3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    tmp = private_jupyter_env()
    try:
        work = Path(tmp.name)
        repin()
        load_or_create_authority(simulation_dir())  # the broker trusts the simulated TEE's roots from its start
        with running_broker(work / "store", sim_dir=simulation_dir(), env=dict(os.environ)) as broker:
            sealed = seal(work, args.mib, args.rounds + 1, broker)
            small = seal(work, 0, args.rounds + 1, broker, size=1024)
            busy = wait_quiet(args.max_busy, 60.0, print)
            rates = []
            cpu_per_gib: list[dict[str, float]] = []
            exchanges: list[float] = []
            for i in range(args.rounds + 1):  # a fresh session each: an owner's log per session
                bench = Bench(CONF)
                try:
                    bench.run("1 + 1")  # attestation and the session's start are not measured
                    before = {**bench.process_cpu(), "broker": broker_cpu()}
                    seconds = upload_once(bench, sealed, "records", magic="%cc_dataset")
                    after = {**bench.process_cpu(), "broker": broker_cpu()}
                    exchange = upload_once(bench, small, "small", magic="%cc_dataset")
                finally:
                    bench.close()
                used = {role: (after[role] - before.get(role, 0.0)) * 1024 / args.mib for role in after}
                shown = ", ".join(f"{role} {cpu:.2f}" for role, cpu in sorted(used.items()))
                if i == 0:
                    print(f"warm-up: {seconds:.3f} s (not counted); CPU s per GiB: {shown}", flush=True)
                    continue
                rates.append(args.mib / seconds)
                cpu_per_gib.append(used)
                exchanges.append(exchange)
                print(f"round {i}: {args.mib} MiB in {seconds:.3f} s = {rates[-1]:.0f} MiB/s; CPU s per GiB: {shown}; "
                      f"1 KiB dataset (the exchange and the owner's log) {exchange * 1000:.1f} ms", flush=True)
    finally:
        tmp.cleanup()
    median = statistics.median(rates)
    verdict = "PASS" if median >= TARGET_MIB_S else "MISS"
    print(f"%cc_dataset into the worker's namespace: median {median:.0f} MiB/s (target >= {TARGET_MIB_S:.0f}) "
          f"{verdict}")
    opening = statistics.median(exchanges) * 1000
    print(f"%cc_dataset of 1 KiB (relay, release exchange, owner's log, one chunk): median {opening:.1f} ms "
          f"(target for the exchange < 50 ms) {'PASS' if opening < 50 else 'MISS'}")
    if args.json is not None:
        result: dict[str, Any] = {"mib": args.mib, "rates_mib_s": rates, "median_mib_s": median,
                                  "small_open_ms": [x * 1000 for x in exchanges],
                                  "cpu_s_per_gib": cpu_per_gib, "busy_before": busy, "git": git_state()}
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
