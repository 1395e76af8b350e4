"""Command line (the data owner's commands): ``cc-kernel data seal|approve`` and ``cc-kernel broker serve|verify-log``.

Registered by ``cli.py`` (``add_parsers`` and ``run``); exit codes as the rest of the CLI: 0 ok, 1 invalid
(a log that does not verify), 2 usage or configuration errors.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from cc_kernel.errors import CCKernelError, ConfigError

COMMANDS = ("data", "broker")
TEXT_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".jsonl", ".md", ".xml", ".yaml", ".yml", ".toml")
READ_SIZE = 1024 * 1024


def add_parsers(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add the ``data`` and ``broker`` commands to the CLI's subparsers."""
    data = sub.add_parser("data", help="datasets sealed to an owner's policy and rules")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=parser_class)
    seal = data_sub.add_parser("seal", help="encrypt FILE under a fresh data key kept in the broker's store")
    seal.add_argument("file", type=Path)
    seal.add_argument("--owner-policy", type=Path, required=True, help="the owner's verification policy (TOML)")
    seal.add_argument("--rules", type=Path, required=True, help="the owner's rules (TOML)")
    seal.add_argument("--broker", required=True, metavar="HOST:PORT", help="where the broker will listen")
    seal.add_argument("--datasets", type=Path, required=True, metavar="DIR", help="the broker's key store")
    seal.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.ccdata")
    seal.add_argument("--owner", default=None, help="the owner's name in the header (default: user@host)")
    seal.add_argument("--format", choices=("auto", "bytes", "text", "npy"), default="auto",
                      help="how the data enters the session (auto: .npy -> npy, text suffixes -> text)")
    approve = data_sub.add_parser("approve", help="print the code digests of a notebook's cells, for the rules")
    approve.add_argument("notebook", type=Path)
    broker = sub.add_parser("broker", help="the data owner's key broker")
    broker_sub = broker.add_subparsers(dest="broker_command", required=True, parser_class=parser_class)
    serve = broker_sub.add_parser("serve", help="release data keys to attested enclaves")
    serve.add_argument("--listen", required=True, metavar="HOST:PORT")
    serve.add_argument("--datasets", type=Path, required=True, metavar="DIR")
    serve.add_argument("--sim-dir", type=Path, default=None,
                       help="the simulated TEE's directory (its roots count only for policies that allow "
                            "simulation; default: the Jupyter data directory's)")
    verify = broker_sub.add_parser("verify-log", help="verify the broker's signed log offline")
    verify.add_argument("--datasets", type=Path, required=True, metavar="DIR")
    verify.add_argument("--log", type=Path, default=None, help="the log file (default: DIR/broker.log)")
    verify.add_argument("--public-key", default=None, metavar="HEX", help="default: DIR/log-key.pub")


def run(args: argparse.Namespace) -> int:
    """Run a ``data`` or ``broker`` command."""
    if args.command == "data" and args.data_command == "seal":
        return _seal(args)
    if args.command == "data":
        return _approve(args)
    if args.broker_command == "serve":
        return _serve(args)
    return _verify_log(args)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from exc


def _format_of(path: Path, choice: str) -> str:
    if choice != "auto":
        return choice
    suffix = path.suffix.lower()
    return "npy" if suffix == ".npy" else "text" if suffix in TEXT_SUFFIXES else "bytes"


def _seal(args: argparse.Namespace) -> int:
    from cc_kernel.attestation.policy import load_policy
    from cc_kernel.broker.store import BrokerStore
    from cc_kernel.channel.transport import parse_address
    from cc_kernel.dataset.format import DatasetHeader, Sealer
    from cc_kernel.dataset.release import DatasetRecord
    from cc_kernel.dataset.rules import load_rules

    policy_text = _read(args.owner_policy, "policy")
    policy = load_policy(policy_text, source=str(args.owner_policy))
    rules_text = _read(args.rules, "rules")
    rules = load_rules(rules_text, source=str(args.rules))
    if parse_address(args.broker).kind != "tcp":
        raise ConfigError("--broker must be a TCP address HOST:PORT")
    store = BrokerStore(args.datasets)
    try:
        size = args.file.stat().st_size
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from exc
    header = DatasetHeader(
        owner=args.owner or f"{getpass.getuser()}@{socket.gethostname()}", dataset_id=os.urandom(16),
        broker=args.broker, broker_spki_sha256=store.spki_sha256, policy_sha256=policy.sha256,
        rules_sha256=rules.sha256, format=_format_of(args.file, args.format),  # type: ignore[arg-type]
        plaintext_size=size,
    )
    data_key = os.urandom(32)
    sealer = Sealer(header, data_key)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    try:
        with args.file.open("rb") as src, tmp.open("wb") as dst:
            dst.write(sealer.header_bytes)
            while chunk := src.read(READ_SIZE):
                dst.write(sealer.feed(chunk))
            dst.write(sealer.finish())
    except ValueError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"{args.file} changed while it was sealed: {exc}") from exc
    store.put(DatasetRecord(dataset_id=header.dataset_id, owner=header.owner, header_sha256=sealer.header_sha256,
                            data_key=data_key, policy=policy_text, rules=rules_text))
    tmp.replace(args.output)
    print(f"sealed {args.file} ({size} bytes, {header.format}) -> {args.output}")
    print(f"  dataset id {header.dataset_id.hex()}, owner {header.owner!r}, mode {rules.mode}")
    print(f"  broker {header.broker}, key sha256 {store.spki_sha256.hex()}")
    print(f"  the data key is in {args.datasets} only; serve it with "
          f"`cc-kernel broker serve --listen {header.broker} --datasets {args.datasets}`")
    return 0


def _approve(args: argparse.Namespace) -> int:
    from cc_kernel.audit.format import code_hash

    try:
        notebook = json.loads(_read(args.notebook, "notebook"))
    except ValueError as exc:
        raise ConfigError(f"{args.notebook} is not JSON: {exc}") from exc
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list):
        raise ConfigError(f"{args.notebook} is not a Jupyter notebook: it has no list of cells")
    print("# code digests (cc-kernel audit code_hash) of the code cells; list the ones you approve in the rules:")
    print("# approved_code_sha256 = [ ... ]")
    number = 0
    for cell in cells:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        number += 1
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else str(source)
        first = next((line for line in text.splitlines() if line.strip()), "")
        print(f'"{code_hash(text).hex()}",  # cell {number}: {first[:60]}')
    return 0


def _serve(args: argparse.Namespace) -> int:
    from cc_kernel.broker.server import serve
    from cc_kernel.broker.store import BrokerStore
    from cc_kernel.simstore import load_simulation_anchors, simulation_dir

    store = BrokerStore(args.datasets)
    sim_dir = args.sim_dir or simulation_dir()
    sim = load_simulation_anchors(sim_dir) if sim_dir.exists() else None

    def ready(address: str) -> None:
        print(f"cc-kernel broker listening on {address}, key sha256 {store.spki_sha256.hex()}", flush=True)

    try:
        asyncio.run(serve(store, args.listen, simulation_anchors=sim, on_ready=ready))
    except KeyboardInterrupt:
        return 0
    return 0


def _verify_log(args: argparse.Namespace) -> int:
    from cc_kernel.dataset.brokerlog import verify_broker_log

    directory: Path = args.datasets
    pub_hex = args.public_key or _read(directory / "log-key.pub", "log key").decode().strip()
    try:
        public_key = bytes.fromhex(pub_hex)
    except ValueError as exc:
        raise ConfigError("the log's public key is not hex") from exc
    path = args.log or directory / "broker.log"
    try:
        entries = verify_broker_log(_read(path, "broker log"), public_key=public_key)
    except CCKernelError as exc:
        print(f"cc-kernel: {path}: INVALID: {exc}", file=sys.stderr)
        return 1
    for e in entries:
        detail = " ".join(f"{k}={v}" for k, v in sorted(e.data.items()))
        print(f"{e.seq:5d} {e.time} {e.event:8s} {detail}")
    print(f"{path}: valid, {len(entries)} entries")
    return 0
