"""Benchmark: ``%cc_upload`` of a file into the worker's namespace, end to end, in MiB/s.

Usage::

    python benchmarks/upload.py [--mib N] [--rounds R] [--json PATH]

A fresh ``confidential-python-sim`` kernel (kernelspecs in a temporary prefix, as ``benchmarks/kernel.py``)
uploads a file of N MiB of random bytes (default 256) as ``bytes``: the kernel reads it on the trusted side and
streams it over the attested channel to the monitor, which hashes every chunk (the receipt's digest) and hands
it to the worker over their socketpair; the worker assembles it and binds it in the namespace. Timed from the
``execute_request`` to its ``execute_reply`` (the reply comes after the worker confirmed the digest); one
warm-up upload first; the median over rounds is reported, with the per-round numbers. The stock kernel has no
upload, so there is no ratio: the target is >= 200 MiB/s. The session log is on (the default), so each upload
also gets its signed receipt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel import Bench, private_jupyter_env, repin
from machine import git_state, wait_quiet

CONF = "confidential-python-sim"
TARGET_MIB_S = 200.0


def upload_once(bench: Bench, path: Path, name: str, *, magic: str = "%cc_upload") -> float:
    """Seconds from the request to the reply of ``%cc_upload PATH NAME`` (or ``magic``: ``%cc_dataset``); raises if
    it did not succeed."""
    t0 = time.perf_counter()
    msg_id = bench.kc.execute(f"{magic} {path} {name}")
    reply = bench._reply(msg_id)
    seconds = time.perf_counter() - t0
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"upload failed: {reply['content']}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256, help="size of the uploaded file in MiB")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-busy", type=float, default=0.3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    tmp = private_jupyter_env()
    try:
        data = Path(tmp.name) / "upload.bin"
        with data.open("wb") as out:
            for _ in range(args.mib):
                out.write(os.urandom(1024 * 1024))
        repin()
        busy = wait_quiet(args.max_busy, 60.0, print)
        bench = Bench(CONF)
        try:
            upload_once(bench, data, "warm")
            bench.run("del warm")
            rates = []
            for i in range(args.rounds):
                seconds = upload_once(bench, data, f"x{i}")
                rates.append(args.mib / seconds)
                bench.run(f"del x{i}")
                print(f"round {i + 1}: {args.mib} MiB in {seconds:.3f} s = {rates[-1]:.0f} MiB/s", flush=True)
        finally:
            bench.close()
    finally:
        tmp.cleanup()
    median = statistics.median(rates)
    verdict = "PASS" if median >= TARGET_MIB_S else "MISS"
    print(f"upload into the worker's namespace: median {median:.0f} MiB/s (target >= {TARGET_MIB_S:.0f}) {verdict}")
    if args.json is not None:
        result: dict[str, Any] = {"mib": args.mib, "rates_mib_s": rates, "median_mib_s": median,
                                  "busy_before": busy, "git": git_state()}
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
