"""Benchmark: how long each teaching notebook takes, top to bottom, on ``confidential-python-sim`` (not a test).

Usage::

    python benchmarks/notebooks.py [--only TEXT] [--json PATH]

Each notebook in ``notebooks/`` runs once with nbclient, from a copy in a temporary directory, with the
kernelspecs in a temporary prefix (as ``benchmarks/kernel.py``) and the simulation policy pinned to the enclave
code as it is now. Timed from ``NotebookClient.execute()`` to its return: kernel start, attestation and every
cell. The target is under 60 s per notebook on the 2-core development machine; ``tests/test_notebooks.py``
checks what the notebooks show, not how long they take.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel import private_jupyter_env, repin
from machine import git_state

REPO = Path(__file__).resolve().parents[1]
SIM = "confidential-python-sim"
TARGET_S = 60.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", metavar="TEXT", help="only the notebooks whose name contains TEXT")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers to this JSON file")
    args = ap.parse_args(argv)
    import nbformat
    from nbclient import NotebookClient

    env = private_jupyter_env()
    rows: list[dict[str, object]] = []
    try:
        repin()
        with tempfile.TemporaryDirectory(prefix="cc-bench-notebooks-") as tmp:
            shutil.copytree(REPO / "notebooks", Path(tmp) / "notebooks")
            for path in sorted((Path(tmp) / "notebooks").glob("*.ipynb")):
                if args.only not in path.stem:
                    continue
                nb = nbformat.read(path, as_version=4)
                client = NotebookClient(nb, kernel_name=SIM, timeout=600, startup_timeout=120,
                                        resources={"metadata": {"path": str(path.parent)}})
                start = time.monotonic()
                client.execute()
                seconds = time.monotonic() - start
                verdict = "MET" if seconds < TARGET_S else "MISS"
                rows.append({"notebook": path.stem, "seconds": round(seconds, 1), "verdict": verdict})
                print(f"{path.stem:40s} {seconds:6.1f} s  (target < {TARGET_S:.0f} s: {verdict})", flush=True)
    finally:
        env.cleanup()
    misses = [str(r["notebook"]) for r in rows if r["verdict"] == "MISS"]
    print("all targets met" if not misses else f"targets missed: {', '.join(misses)}")
    if args.json is not None:
        args.json.write_text(json.dumps({"code": git_state(), "target_s": TARGET_S, "rows": rows}, indent=1) + "\n")
    return 0 if not misses else 1


if __name__ == "__main__":
    sys.exit(main())
