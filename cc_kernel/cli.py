"""Command line: the ``cc-kernel`` command (measure, policy, enclave serve, attest, client-key, audit, ...).

Exit codes: 0 success / verified, 1 verification failed (reasons printed), 2 usage, input or connection error;
141 when stdout is closed early (``cc-kernel measure --json | head -c 10``), silently, as for SIGPIPE.
Errors are printed as one clear message, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cc_kernel import __version__, cli_data
from cc_kernel.errors import CCKernelError, PolicyViolation, VerificationError

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
EXIT_NO_EVIDENCE = 3  # enclave serve --platform hardware: this machine cannot produce TEE evidence
EXIT_BROKEN_PIPE = 141  # stdout closed early (`| head`): 128 + SIGPIPE, as a tool killed by SIGPIPE reports
#: ``evidence verify --platform`` choices (the same as ``cc_kernel.attestation.offline.OFFLINE_PLATFORMS``,
#: spelled out here so that building the parser imports no verifier).
EVIDENCE_PLATFORMS = ("sev-snp", "tdx", "sgx", "nitro", "ratls")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on usage errors; keep that, with our prefix
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"cc-kernel: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cc-kernel", description="Confidential Python: attested Jupyter kernel tools.")
    p.add_argument("--version", action="version", version=f"cc-kernel {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    m = sub.add_parser("measure", help="print the measurement of the installed enclave")
    m.add_argument("--json", action="store_true", help="print the manifest too, as JSON")

    pol = sub.add_parser("policy", help="verification policies")
    pol_sub = pol.add_subparsers(dest="policy_command", required=True, parser_class=_Parser)
    init = pol_sub.add_parser("init", help="write a policy pinning the current enclave measurement")
    init.add_argument("--output", "-o", type=Path, required=True, help="policy file to write")
    init.add_argument("--simulation", action="store_true",
                      help="accept the SIMULATED TEE (unsafe_allow_simulation: no hardware protection)")
    init.add_argument("--platform", default=None, choices=["sev-snp", "tdx", "sgx-dcap", "nitro"],
                      help="hardware platform to pin (with --measurement)")
    init.add_argument("--measurement", action="append", default=[],
                      help="hex measurement to pin (repeatable): SEV-SNP MEASUREMENT, TDX MRTD, SGX MRENCLAVE or "
                           "Nitro PCR0")
    init.add_argument("--rtmr", action="append", default=[], metavar="INDEX=HEX",
                      help="tdx: an RTMR to pin (repeatable); a TDX policy pins RTMR1 and RTMR2 besides MRTD")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    pcheck = pol_sub.add_parser("check", help="validate a policy file and print its summary")
    pcheck.add_argument("file", type=Path)

    enc = sub.add_parser("enclave", help="the enclave server (runs inside the TEE)")
    enc_sub = enc.add_subparsers(dest="enclave_command", required=True, parser_class=_Parser)
    serve = enc_sub.add_parser("serve", help="accept kernel connections; one fresh enclave per session")
    serve.add_argument("--listen", required=True,
                       help="tcp://HOST:PORT, HOST:PORT, unix:/path or vsock://CID:PORT (in an AWS Nitro "
                            "enclave: vsock://any:PORT)")
    serve.add_argument("--platform", default="simulation", choices=["simulation", "hardware"],
                       help="simulation (default): the simulated TEE, not hardware-protected; hardware: evidence "
                            "from this TEE (configfs-tsm, /dev/sev-guest, Gramine, Nitro NSM), never simulated")
    serve.add_argument("--evidence-provider", default=None,
                       choices=["auto", "configfs-tsm", "sev-guest", "gramine", "nitro-nsm"],
                       help="with --platform hardware: use only this provider (default: the first that works)")
    serve.add_argument("--sim-dir", type=Path, default=None, help="simulated TEE authority directory")
    serve.add_argument("--fault", action="append", default=[],
                       help="teaching fault for the simulated TEE (debug, old-tcb, swapped-key, replay)")
    serve.add_argument("--max-sessions", type=int, default=8,
                       help="sessions served at once; a client beyond them is told the server is busy")
    serve.add_argument("--authorized-clients", type=Path, default=None, metavar="FILE",
                       help="the client keys this server accepts, one 'cc-kernel-client ...' line each (printed by "
                            "`cc-kernel client-key` on the client); default /etc/cc-kernel/authorized_clients if "
                            "it exists")
    serve.add_argument("--unsafe-serve-any-client", action="store_true",
                       help="UNSAFE: serve anyone who can reach the address, without client keys")
    serve.add_argument("--pre-attestation-timeout", type=float, default=10.0, metavar="SECONDS",
                       help="seconds a client has for the TLS handshake, Hello and its attestation request "
                            "(default 10)")
    serve.add_argument("--log-level", default="INFO")

    ck = sub.add_parser("client-key", help="print this user's client key line for an enclave server's "
                                           "authorised-clients file (the key is created on first use)")
    ck.add_argument("--comment", default=None,
                    help="name for a new key (default user@host); an existing key keeps its name")

    att = sub.add_parser("attest", help="connect to an enclave, verify its attestation, print the claims")
    att.add_argument("address",
                     help="tcp://HOST:PORT, HOST:PORT, unix:/path or vsock://CID:PORT (from a Nitro parent "
                          "instance: the enclave's CID)")
    att.add_argument("--policy", type=Path, default=None,
                     help="policy file (default: built-in hardware policy, any measurement, no debug)")
    att.add_argument("--sim-dir", type=Path, default=None, help="simulated TEE authority directory")
    att.add_argument("--collateral", type=Path, default=None, metavar="DIR",
                     help="Intel collateral for a TDX/SGX enclave (tcb_info.json, qe_identity.json, pck_crl.der, "
                          "root_crl.der, tcb_signing_chain.pem), fetched on this side; signature-checked")
    att.add_argument("--json", action="store_true", help="print the verified claims as JSON")
    att.add_argument("--timeout", type=float, default=15.0)
    att.add_argument("--no-client-key", action="store_true",
                     help="present no client key (by default this user's, created on first use)")

    inst = sub.add_parser("install", help="install the two kernelspecs (Confidential Python and its SIMULATION twin)")
    where = inst.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user")
    where.add_argument("--sys-prefix", action="store_true", help="install into this Python environment")
    where.add_argument("--prefix", default=None, help="install under PREFIX/share/jupyter/kernels")
    inst.add_argument("--no-pin", action="store_true",
                      help="do not pin the simulated enclave's measurement into the simulation kernel's policy")

    aud = sub.add_parser("audit", help="attested session logs: verify offline, show")
    aud_sub = aud.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)
    averify = aud_sub.add_parser(
        "verify", help="re-verify a session log offline (exit 0 pass, 1 fail: invalid, unterminated, simulated, or a "
                       "notebook that does not match; 2 unreadable)")
    averify.add_argument("log", type=Path, help="session log file")
    averify.add_argument("--policy", type=Path, default=None,
                         help="appraise under this policy (default: the policy recorded in the log)")
    averify.add_argument("--notebook", type=Path, default=None,
                         help="also match this notebook's code cells against the receipts")
    averify.add_argument("--sim-dir", type=Path, default=None,
                         help="simulated TEE authority whose anchors verify simulated evidence (default: this "
                              "user's; used only if the policy allows simulation)")
    averify.add_argument("--allow-simulation", action="store_true",
                         help="pass a log of a SIMULATED TEE session (it shows the log's integrity, never hardware "
                              "protection); a --policy with unsafe_allow_simulation = true does the same")
    averify.add_argument("--accept", action="append", default=[],
                         choices=["notebook.edited", "notebook.unexecuted", "notebook.unaccounted"],
                         help="with --notebook: pass despite cells EDITED after execution, cells NOT EXECUTED, or "
                              "receipts no cell accounts for (repeatable)")
    averify.add_argument("--json", action="store_true", help="print the report as JSON")
    ashow = aud_sub.add_parser("show", help="print a session log's timeline (not verified)")
    ashow.add_argument("log", type=Path, help="session log file")
    ashow.add_argument("--json", action="store_true", help="print the entries as JSON")

    evd = sub.add_parser("evidence", help="raw attestation evidence files: verify offline")
    evd_sub = evd.add_subparsers(dest="evidence_command", required=True, parser_class=_Parser)
    everify = evd_sub.add_parser(
        "verify", help="verify a raw SEV-SNP report, DCAP quote, Nitro document or RA-TLS certificate offline "
                       "(exit 0 accepted, 1 rejected, 2 usage error or unreadable input)")
    everify.add_argument("file", type=Path,
                         help="the evidence: SEV-SNP report, TDX/SGX quote, Nitro COSE document (binary, hex or "
                              "base64), or an RA-TLS certificate (PEM or DER)")
    everify.add_argument("--platform", required=True, choices=EVIDENCE_PLATFORMS,
                         help="what FILE is (never guessed): sev-snp, tdx, sgx, nitro, or ratls (a CCC "
                              "interoperable RA-TLS certificate carrying a DCAP quote)")
    everify.add_argument("--cert", type=Path, default=None, metavar="VCEK_OR_VLEK",
                         help="sev-snp: the VCEK or VLEK that signed the report (DER or PEM; required); nitro: a "
                              "TLS certificate whose public key the document's user_data must be")
    everify.add_argument("--chain", type=Path, default=None, metavar="PEM",
                         help="sev-snp: the ASK (or ASVK) and/or ARK; the ARK must be the pinned one for the "
                              "report's product (default: the pinned ASK/ASVK and ARK)")
    everify.add_argument("--collateral", type=Path, default=None, metavar="DIR",
                         help="tdx/sgx/ratls: a directory of Intel collateral (tcb_info.json or tcbinfo-*.json, "
                              "qe_identity.json or qe-identity-*.json, pck_crl.der or pck-*-crl-*.der, "
                              "root_crl.der or *-root-ca-crl-*.der, tcb_signing_chain.pem or "
                              "*-tcb-signing-chain.pem); any other file is an error")
    everify.add_argument("--policy", type=Path, default=None,
                         help="policy file (default: built-in, any measurement, never debug, every other check "
                              "strict: TDX/SGX then need --collateral)")
    everify.add_argument("--at", default=None, metavar="ISO8601",
                         help="verification time with a timezone, e.g. 2025-06-01T00:00:00Z (default: now); a "
                              "time without a timezone is an error, never guessed")
    everify.add_argument("--json", action="store_true",
                         help="print the claims (and, when rejected, every failure) as JSON")
    cli_data.add_parsers(sub, _Parser)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows up here, not as noise at interpreter exit
    except BrokenPipeError:  # `cc-kernel ... | head`: the reader left; say nothing more
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE


def _stdout_to_devnull() -> None:
    """Point file descriptor 1 at /dev/null, so that the interpreter's final flush of what is still buffered
    cannot raise BrokenPipeError again (Python's documented recipe for SIGPIPE)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "measure":
            return _measure(args)
        if args.command == "policy":
            return _policy(args)
        if args.command == "enclave":
            return _enclave(args)
        if args.command == "attest":
            return _attest(args)
        if args.command == "client-key":
            return _client_key(args)
        if args.command == "install":
            return _install(args)
        if args.command == "audit":
            return _audit(args)
        if args.command == "evidence":
            return _evidence_verify(args)
        if args.command in cli_data.COMMANDS:
            return cli_data.run(args)
    except VerificationError as exc:
        _err(f"verification failed:\n{exc}")
        return EXIT_INVALID
    except CCKernelError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


def _err(text: str) -> None:
    print(f"cc-kernel: {text}", file=sys.stderr)


def _measure(args: argparse.Namespace) -> int:
    from cc_kernel.measure import enclave_measurement, manifest, python_version

    digest = enclave_measurement()
    if args.json:
        print(json.dumps({
            "measurement": digest.hex(), "python": python_version(),
            "manifest": [{"name": n, "sha256": d.hex()} for n, d in manifest()],
        }, indent=2))
    else:
        print(digest.hex())
    return EXIT_OK


def _policy(args: argparse.Namespace) -> int:
    from cc_kernel.attestation.policy import load_policy, render_policy

    if args.policy_command == "check":
        policy = _load_policy_file(args.file)
        print(f"{args.file}: valid policy, sha256 {policy.sha256.hex()}")
        print(f"  platforms: {', '.join(policy.platforms)}")
        print(f"  weakenings in force: {', '.join(policy.unsafe_flags) or 'none'}")
        return EXIT_OK
    from cc_kernel.measure import enclave_measurement

    if args.output.exists() and not args.force:
        _err(f"{args.output} exists; pass --force to overwrite it")
        return EXIT_USAGE
    note = f"written by cc-kernel {__version__} policy init on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    if args.platform:
        if not args.measurement:
            _err("--platform needs --measurement HEX (the launch measurement of your hardware enclave)")
            return EXIT_USAGE
        rtmr: dict[int, str] = {}
        for item in args.rtmr:
            index, sep, value = item.partition("=")
            if not sep or not index.strip().isdigit():
                _err(f"--rtmr {item!r}: write INDEX=HEX, e.g. --rtmr 1=<96 hex digits>")
                return EXIT_USAGE
            rtmr[int(index)] = value
        text = render_policy(
            args.platform, args.measurement, allow_simulation=args.simulation,
            simulation_measurements=[enclave_measurement()] if args.simulation else (), note=note, rtmr=rtmr,
        )
    elif args.simulation:
        text = render_policy("simulation", [enclave_measurement()], note=note)
    else:
        _err("choose what to pin: --simulation (this machine's simulated enclave) and/or "
             "--platform P --measurement HEX (a hardware enclave)")
        return EXIT_USAGE
    load_policy(text, source=str(args.output))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return EXIT_OK


def _load_policy_file(path: Path) -> Any:
    from cc_kernel.attestation.policy import load_policy
    from cc_kernel.errors import PolicyError

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from exc
    return load_policy(data, source=str(path))


def _enclave(args: argparse.Namespace) -> int:
    from cc_kernel.channel.transport import parse_address
    from cc_kernel.enclave.evidence import FAULTS
    from cc_kernel.enclave.server import Supervisor

    bad = [f for f in args.fault if f not in FAULTS]
    if bad:
        _err(f"unknown fault {bad[0]!r}; known: {', '.join(FAULTS)}")
        return EXIT_USAGE
    hardware = args.platform == "hardware"
    if hardware and (args.fault or args.sim_dir is not None):
        _err("--fault and --sim-dir belong to the simulated TEE; they cannot be used with --platform hardware")
        return EXIT_USAGE
    if args.evidence_provider is not None and not hardware:
        _err("--evidence-provider chooses a hardware evidence provider: it needs --platform hardware")
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level.upper(), format="[cc-kernel enclave] %(levelname)s %(message)s")
    extra: list[str] = []
    mode = "SIMULATED TEE (not hardware-protected)"
    if hardware:
        from cc_kernel.enclave.evidence import detect_hardware_source

        try:  # fail here, once and clearly, rather than in every enclave process
            source = detect_hardware_source(args.evidence_provider)
        except CCKernelError as exc:
            _err(f"cannot serve hardware enclaves: {exc}")
            return EXIT_NO_EVIDENCE
        extra = ["--platform", "hardware"]
        if args.evidence_provider is not None:
            extra += ["--evidence-provider", args.evidence_provider]
        mode = f"TEE hardware, evidence from {source.name}"
    address = parse_address(args.listen)  # a bad address is reported before anything else is checked
    clients_file = _authorized_clients_file(args)
    if args.max_sessions < 1 or not args.pre_attestation_timeout > 0:
        _err("--max-sessions must be at least 1 and --pre-attestation-timeout positive")
        return EXIT_USAGE
    sup = Supervisor(address, sim_dir=args.sim_dir, faults=args.fault,
                     max_sessions=args.max_sessions, extra_args=extra, authorized_clients=clients_file,
                     unsafe_serve_any_client=clients_file is None,
                     pre_attestation_timeout=args.pre_attestation_timeout, log_level=args.log_level.upper())
    bound = sup.bind()
    print(f"cc-kernel enclave serving on {bound} — {mode}", flush=True)
    if clients_file is None:
        print("UNSAFE: serving ANY client (--unsafe-serve-any-client): no client key is checked", flush=True)
        logging.getLogger("cc_kernel.enclave").warning(
            "UNSAFE: --unsafe-serve-any-client: anyone who can reach %s gets a session; no client key is checked",
            bound)
    else:
        print(f"clients: the keys authorised in {clients_file}", flush=True)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(EXIT_OK)  # unwinds serve_forever, which stops every enclave process it started

    signal.signal(signal.SIGTERM, stop)  # `kill`, systemd, docker stop: stop like Ctrl-C, not abruptly
    sup.serve_forever()
    return EXIT_OK


def _authorized_clients_file(args: argparse.Namespace) -> Path | None:
    """The authorised-clients file ``enclave serve`` uses, checked now (each enclave process reads it again
    when it starts); None with ``--unsafe-serve-any-client``.

    Raises:
        ConfigError: no usable file and no unsafe option (the server must not start: exit 2); the message says
            how to authorise a client.
    """
    from cc_kernel.channel.clients import CLIENT_KEY_COMMAND, DEFAULT_AUTHORIZED_CLIENTS, AuthorizedClients
    from cc_kernel.errors import ConfigError

    if args.unsafe_serve_any_client:
        if args.authorized_clients is not None:
            raise ConfigError("--authorized-clients and --unsafe-serve-any-client contradict each other; choose one")
        return None
    path: Path | None = args.authorized_clients
    if path is None and DEFAULT_AUTHORIZED_CLIENTS.exists():
        path = DEFAULT_AUTHORIZED_CLIENTS
    fix = (f"on each client machine run `{CLIENT_KEY_COMMAND}` and add the line it prints to the file (or, to "
           "serve anyone who can reach this server, pass --unsafe-serve-any-client)")
    if path is None:
        raise ConfigError(f"refusing to start: no authorised client keys (no --authorized-clients FILE, and "
                          f"{DEFAULT_AUTHORIZED_CLIENTS} does not exist). To authorise a client, {fix}")
    clients = AuthorizedClients.load(path)  # ConfigError (unreadable, malformed line N): exit 2
    if not len(clients):
        raise ConfigError(f"refusing to start: {path} lists no client key. To authorise a client, {fix}")
    return path


def _client_key(args: argparse.Namespace) -> int:
    from cc_kernel.clientkey import client_key_dir, load_or_create_client_identity
    from cc_kernel.crypto.clientcert import client_certificate_info

    identity = load_or_create_client_identity(comment=args.comment)
    print(identity.line)
    print(f"cc-kernel: the line above authorises this client key (in {client_key_dir()}) on an enclave server: "
          "its owner adds it to the server's authorised-clients file", file=sys.stderr)
    expires = client_certificate_info(identity.tls.cert_der).not_after
    if expires <= datetime.now(UTC):
        _err(f"warning: this client key's certificate expired on {expires:%Y-%m-%d}; servers refuse it. Move "
             f"{client_key_dir()} away and run this command again for a new key (and a new line)")
    return EXIT_OK


def _attest(args: argparse.Namespace) -> int:
    from cc_kernel.attestation.anchors import hardware_anchors
    from cc_kernel.attestation.policy import default_hardware_policy
    from cc_kernel.channel.client import connect_attested
    from cc_kernel.channel.transport import parse_address

    policy = _load_policy_file(args.policy) if args.policy else default_hardware_policy()
    sim = None
    if policy.unsafe_allow_simulation:
        from cc_kernel.simstore import load_simulation_anchors, simulation_dir

        sim = load_simulation_anchors(args.sim_dir or simulation_dir())
    address = parse_address(args.address)
    collateral = None
    if args.collateral is not None:
        collateral = _read_collateral_dir(args.collateral)
        if collateral is None:
            return EXIT_USAGE

    client_identity = None
    if not args.no_client_key:
        from cc_kernel.clientkey import load_or_create_client_identity

        client_identity = load_or_create_client_identity()

    async def run() -> Any:
        attested = await connect_attested(
            address, policy=policy, anchors=hardware_anchors(), simulation_anchors=sim, collateral=collateral,
            timeout=args.timeout, client_identity=client_identity,
        )
        await attested.channel.aclose()
        return attested

    try:
        attested = asyncio.run(run())
    except PolicyViolation as exc:
        if args.json:
            print(json.dumps({"verified": False, "error": exc.message,
                              "failures": [_failure(f) for f in exc.failures]}, indent=2))
        _err(f"attestation REFUSED by policy {policy.source}:\n{exc}")
        return EXIT_INVALID
    except VerificationError as exc:
        if args.json:
            print(json.dumps({"verified": False, "error": str(exc), "failures": [_failure(exc)]}, indent=2))
        _err(f"attestation REFUSED: {exc}")
        return EXIT_INVALID
    result = attested.peer.result
    info = attested.session_info
    protections = dict(info.protections) if info is not None else {}
    if args.json:
        out = result.to_json_dict()
        out["verified"] = True
        out["timings_ms"] = {k: round(v, 2) for k, v in attested.timings_ms.items()}
        out["protections"] = protections
        out["sandbox_complete"] = bool(info and info.complete)
        print(json.dumps(out, indent=2))
    else:
        from cc_kernel.kernel.badge import protections_text

        print(f"verified {address}")
        for line in result.summary_lines():
            print(f"  {line}")
        print(f"  Sandbox:     {protections_text(protections)}")
    return EXIT_OK


def _read_collateral_dir(directory: Path) -> Any:
    """Intel collateral from a directory; None after printing why not (a usage error)."""
    from cc_kernel.kernel.collateral import load_collateral_dir

    try:
        return load_collateral_dir(directory)
    except ValueError as exc:
        _err(f"--collateral: {exc}")
        return None


def _failure(exc: VerificationError) -> dict[str, Any]:
    def show(v: object) -> object:
        if isinstance(v, bytes):
            return v.hex()
        if isinstance(v, list | tuple):
            return [show(item) for item in v]
        return v if isinstance(v, int | str | float | None) else repr(v)

    return {"check": exc.check, "message": exc.message, "got": show(exc.got), "expected": show(exc.expected),
            "index": exc.index}


# --- evidence verify -----------------------------------------------------------------------------------------

def _no_claims() -> dict[str, Any]:
    """The claim fields of ``--json`` when the evidence is not authentic: nothing unverified is shown as a claim."""
    return {"status": "contraindicated", "platform": None, "product": None, "measurement": None,
            "report_data": None, "debug": None, "tcb": {}, "tcb_status": None, "signer": None, "warnings": []}



def _read_file(path: Path, what: str) -> bytes | None:
    """The bytes of an input file, or None after printing why it cannot be read (a usage error)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        _err(f"cannot read {what} {path}: {exc.strerror or exc}")
        return None


def _parse_at(text: str | None) -> datetime | None:
    """``--at``: an ISO 8601 time WITH a timezone (default now, UTC); None after printing why not."""
    if text is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        _err(f"--at {text!r} is not an ISO 8601 time; write e.g. 2025-06-01T00:00:00Z")
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        _err(f"--at {text!r} has no timezone; write it in UTC with a Z (e.g. 2025-06-01T00:00:00Z) or with an "
             "offset such as +02:00: certificate validity depends on the exact time, so it is never guessed")
        return None
    return moment


def _evidence_verify(args: argparse.Namespace) -> int:
    from cc_kernel.attestation.anchors import hardware_anchors
    from cc_kernel.attestation.appraisal import appraise_offline
    from cc_kernel.attestation.offline import check_options, default_offline_policy, verify_raw

    # 1. the arguments, before reading anything
    now = _parse_at(args.at)
    if now is None:
        return EXIT_USAGE
    try:
        check_options(args.platform, cert=args.cert is not None, chain=args.chain is not None,
                      collateral=args.collateral is not None)
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE
    # 2. the inputs (unreadable: exit 2) and the policy (invalid: PolicyError, exit 2)
    data = _read_file(args.file, "the evidence file")
    cert = _read_file(args.cert, "the --cert file") if args.cert is not None else b""
    chain = _read_file(args.chain, "the --chain file") if args.chain is not None else b""
    if data is None or cert is None or chain is None:
        return EXIT_USAGE
    policy = _load_policy_file(args.policy) if args.policy else default_offline_policy()
    # 3. authenticity (collateral that does not parse is a verification failure, like the evidence itself)
    try:
        collateral = None
        if args.collateral is not None:
            collateral = _read_collateral_dir(args.collateral)
            if collateral is None:
                return EXIT_USAGE
        out = verify_raw(args.platform, data, anchors=hardware_anchors(), now=now,
                         cert=cert if args.cert is not None else None,
                         chain=chain if args.chain is not None else None, collateral=collateral)
    except VerificationError as exc:
        return _evidence_rejected(args, data, policy, now, [exc], out=None, summary=str(exc))
    # 4. the policy
    try:
        result = appraise_offline(out.evidence, policy, now=now)
    except PolicyViolation as exc:
        return _evidence_rejected(args, data, policy, now, list(exc.failures), out=out, summary=str(exc))
    # 5. accepted
    if args.json:
        from cc_kernel.attestation.offline import evidence_json

        print(json.dumps({"verified": True, "authentic": True, **evidence_json(out, result=result),
                          **_evidence_context(args, policy)}, indent=2))
    else:
        ev = out.evidence
        print(f"{args.file}: ACCEPTED ({result.status}) - authentic {ev.platform} evidence ({ev.product}) under "
              f"policy {policy.source}")
        extra = [f"Unsafe used: {', '.join(result.unsafe_flags_used) or 'none'}",
                 "Trust:       " + ", ".join(f"{k}={v}" for k, v in result.trust_vector.items())]
        for line in _evidence_lines(out, debug=result.debug, warnings=result.warnings, now=now, extra=extra):
            print(f"  {line}")
    return EXIT_OK


def _evidence_rejected(
    args: argparse.Namespace, data: bytes, policy: Any, now: datetime, failures: list[VerificationError], *,
    out: Any, summary: str,
) -> int:
    """Print why the evidence was rejected (every failure, got/expected, hints); exit 1."""
    from cc_kernel.attestation.offline import evidence_json, failure_hints
    from cc_kernel.attestation.result import iso_utc

    hints = failure_hints(args.platform, data, failures)
    if args.json:
        claims = evidence_json(out) if out is not None else _no_claims()
        print(json.dumps({"verified": False, "authentic": out is not None, **claims,
                          **_evidence_context(args, policy), "failures": [_failure(f) for f in failures],
                          "hints": hints}, indent=2))
    elif out is not None:  # authentic: show what it claims, so the reasons below can be read against it
        ev = out.evidence
        print(f"{args.file}: REJECTED - authentic {ev.platform} evidence ({ev.product}) refused by policy "
              f"{policy.source}")
        for line in _evidence_lines(out, debug=ev.debug, warnings=ev.warnings, now=now):
            print(f"  {line}")
    if out is None:
        _err(f"{args.file}: REJECTED - not authentic {args.platform} evidence at {iso_utc(now)}:\n  - {summary}")
    else:
        _err(f"{args.file}: REJECTED by policy {policy.source}:\n{summary}")
    for hint in hints:
        _err(f"hint: {hint}")
    return EXIT_INVALID


def _evidence_lines(
    out: Any, *, debug: bool, warnings: tuple[str, ...], now: datetime, extra: list[str] | None = None
) -> list[str]:
    from cc_kernel.attestation.result import iso_utc

    ev = out.evidence
    tcb = " ".join(f"{k}={v}" for k, v in ev.tcb.items()) or "n/a"
    status = f" (status {ev.tcb_status})" if ev.tcb_status else (
        " (status unknown: no complete Intel collateral)" if ev.platform in ("tdx", "sgx-dcap") else "")
    lines = [
        f"Measurement: {ev.measurement.hex()}",
        f"Report data: {ev.report_data.hex() or '(none)'}",
        "Debug:       " + ("ENABLED (the host can read and write enclave memory)" if debug else "disabled"),
        f"TCB:         {tcb}{status}",
        f"Signer:      {ev.signer}; anchor sha256 {ev.anchor_sha256.hex()[:16]}...",
        f"Warnings:    {', '.join(warnings) or 'none'}",
    ]
    lines += [f"Bound:       {binding}" for binding in out.bindings]
    lines += extra or []
    lines.append(f"Verified at: {iso_utc(now)} (offline: this evidence is bound to no channel)")
    return lines


def _evidence_context(args: argparse.Namespace, policy: Any) -> dict[str, Any]:
    return {"file": str(args.file), "requested_platform": args.platform, "policy_source": policy.source,
            "policy_sha256": policy.sha256.hex()}


def _install(args: argparse.Namespace) -> int:
    from cc_kernel.kernel.install import install, pin_simulation_policy

    prefix = sys.prefix if args.sys_prefix else args.prefix
    for path in install(user=args.user, prefix=prefix):
        print(f"installed kernelspec {path}")
    if not args.no_pin:
        print(f"pinned the simulated enclave's measurement in {pin_simulation_policy()}")
    return EXIT_OK


def _audit(args: argparse.Namespace) -> int:
    try:
        data = args.log.read_bytes()
    except OSError as exc:
        _err(f"cannot read the audit log {args.log}: {exc.strerror or exc}")
        return EXIT_USAGE
    if args.audit_command == "show":
        return _audit_show(args, data)
    return _audit_verify(args, data)


def _audit_sim_anchors(sim_dir: Path | None) -> Any:
    """The simulation anchors from a simulated authority directory (certificates only), or None if absent."""
    from cc_kernel.errors import ConfigError
    from cc_kernel.simstore import ANCHOR_FILES, read_simulation_anchors, simulation_dir

    directory = sim_dir or simulation_dir()
    missing = [name for name in ANCHOR_FILES if not (directory / name).is_file()]
    if missing == list(ANCHOR_FILES) and sim_dir is None:
        return None  # this machine has no simulated authority: simulated evidence then verifies against nothing
    if missing:
        what = " and ".join(missing)
        raise ConfigError(
            f"{'--sim-dir ' if sim_dir is not None else 'the simulated TEE authority in '}{directory}: {what} "
            f"{'is' if len(missing) == 1 else 'are'} missing; a simulated TEE authority directory holds both "
            "ark-cert.pem (the simulated ARK, the root) and ask-cert.pem (the ASK it signed): the simulation "
            "anchors (docs/audit-log.md, 'Verifying simulated evidence')"
        )
    return read_simulation_anchors(directory)


def _audit_verify(args: argparse.Namespace, data: bytes) -> int:
    from cc_kernel.attestation.anchors import hardware_anchors
    from cc_kernel.audit.render import cells_lines, report_json, report_lines, unaccounted_lines, verdict_lines
    from cc_kernel.audit.verify import audit_verdict, match_notebook, unaccounted_receipts, verify_log

    policy = _load_policy_file(args.policy) if args.policy else None
    notebook = None
    if args.notebook is not None:
        try:
            notebook = json.loads(args.notebook.read_bytes())
        except OSError as exc:
            _err(f"cannot read the notebook {args.notebook}: {exc.strerror or exc}")
            return EXIT_USAGE
        except (ValueError, RecursionError) as exc:  # json nests recursively: hostile nesting is not a notebook
            why = exc if isinstance(exc, ValueError) else "nested too deeply"
            _err(f"{args.notebook} is not a JSON notebook: {why}")
            return EXIT_USAGE
    report = verify_log(data, policy=policy, anchors=hardware_anchors(),
                        simulation_anchors=_audit_sim_anchors(args.sim_dir), now=datetime.now(UTC))
    cells = match_notebook(report, notebook) if notebook is not None else None
    unaccounted = unaccounted_receipts(report, notebook) if notebook is not None else None
    verdict = audit_verdict(
        report, cells=cells, unaccounted=unaccounted or (), accept=args.accept,
        allow_simulation=args.allow_simulation or (policy is not None and policy.unsafe_allow_simulation),
    )
    if args.json:
        doc = report_json(report, cells=cells, unaccounted=unaccounted, verdict=verdict)
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print("\n".join(report_lines(report, source=str(args.log))))
        if cells is not None:
            caveat = "" if report.status == "valid" else " (only against the entries that verify)"
            print(f"notebook {args.notebook}: {len(cells)} code cells{caveat}")
            print("\n".join(cells_lines(cells)))
        if unaccounted:
            print(f"receipts no cell of {args.notebook} accounts for ({len(unaccounted)}):")
            print("\n".join(unaccounted_lines(unaccounted)))
        print("\n".join(verdict_lines(verdict)))
    return EXIT_OK if verdict.passed else EXIT_INVALID


def _audit_show(args: argparse.Namespace, data: bytes) -> int:
    from cc_kernel.audit.render import entry_json, timeline_lines
    from cc_kernel.audit.verify import read_log_unverified

    log = read_log_unverified(data)
    if args.json:
        print(json.dumps({"verified": False, "entries": [entry_json(e) for e in log.entries],
                          "problems": [p.to_json_dict() for p in log.problems]}, indent=2, ensure_ascii=False))
    else:
        print(f"{args.log}: {len(log.entries)} entries — NOT verified (run `cc-kernel audit verify {args.log}`)")
        print("\n".join(timeline_lines(log.entries)))
        for problem in log.problems:
            print(f"problem at entry #{problem.index}: [{problem.check}] {problem.message}")
    return EXIT_INVALID if log.problems else EXIT_OK
