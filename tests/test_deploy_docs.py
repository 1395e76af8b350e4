"""The deployment guides (docs/deploy/*.md) and their files (deploy/**) against the real code.

* every ```toml block is a policy that ``load_policy`` accepts, and weakens nothing without saying so;
* every ``cc-kernel ...`` command (shell blocks, inline code, the Nitro Dockerfile, the confidential-VM
  /init) parses with the CLI's own argparse parser, and the addresses in them parse with ``parse_address``;
* the Gramine manifest template is TOML once its template expressions are filled in, uses only keys that
  Gramine's manifest schema knows, and keeps the settings that make MRENCLAVE meaningful (no debug, DCAP,
  fixed arguments, no allowed or encrypted files, every mounted host path a trusted file).

Every command line the guides show must parse with the real parsers (``cc-kernel`` and
``python -m cc_kernel.enclave``), so a guide cannot drift from the code.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cc_kernel.attestation.policy import load_policy
from cc_kernel.channel.transport import parse_address
from cc_kernel.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "deploy"
GUIDES = sorted(DOCS.glob("*.md"))
TEMPLATE = ROOT / "deploy" / "gramine" / "cc-kernel-enclave.manifest.template"
DOCKERFILE = ROOT / "deploy" / "nitro" / "Dockerfile"
CVM_INIT = ROOT / "deploy" / "cvm" / "init"

#: Fenced block languages the guides use; shell blocks are searched for commands.
SHELL_BLOCKS = ("bash", "sh")
BLOCK_LANGUAGES = (*SHELL_BLOCKS, "toml", "ini", "text")

#: The platform guides and the platform their strict policy pins.
PLATFORM_GUIDES = {"sev-snp.md": "sev-snp", "tdx.md": "tdx", "gramine-sgx.md": "sgx-dcap", "nitro.md": "nitro"}


# --- extraction ------------------------------------------------------------------------------------------------


def _fenced_blocks(text: str) -> Iterator[tuple[str, str, int]]:
    """(language, body, line number of the opening fence) of every fenced code block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not match:
            i += 1
            continue
        indent, lang, start = match.group(1), match.group(2), i + 1
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        yield lang, "\n".join(body), start
        i += 1


def _inline_code(text: str) -> Iterator[str]:
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    yield from (m.group(1) for m in re.finditer(r"`([^`\n]+)`", outside))


def _logical_lines(script: str) -> Iterator[str]:
    """Shell lines with backslash continuations joined."""
    pending = ""
    for line in script.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def _segments(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell line (split at ;, &&, ||, |), each without its leading VAR=value words."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words: list[str] = []
    for token in lexer:
        if token in (";", "&&", "||", "|", "&", "(", ")"):
            if words:
                yield words
            words = []
        else:
            words.append(token)
    if words:
        yield words


def _env_assignments(line: str) -> Iterator[tuple[str, str]]:
    for words in _segments(line):
        for word in words:
            if re.match(r"^[A-Z_][A-Z0-9_]*=", word):
                name, value = word.split("=", 1)
                yield name, value
            else:
                break


def _cc_kernel_argv(words: list[str]) -> list[str] | None:
    """The arguments after ``cc-kernel`` if this simple command runs it (after env, sudo, exec)."""
    rest = list(words)
    while rest and (re.match(r"^[A-Z_][A-Z0-9_]*=", rest[0]) or rest[0] in ("sudo", "exec", "$")):
        rest.pop(0)
    if rest and Path(rest[0]).name == "cc-kernel":
        return rest[1:]
    return None


def _doc_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after cc-kernel) for every cc-kernel command in the guides and deploy files."""
    found: list[tuple[str, list[str]]] = []
    for guide in GUIDES:
        text = guide.read_text()
        for lang, body, line in _fenced_blocks(text):
            if lang not in SHELL_BLOCKS:
                continue
            for logical in _logical_lines(body):
                for words in _segments(logical.lstrip("$ ")):
                    argv = _cc_kernel_argv(words)
                    if argv is not None:
                        found.append((f"{guide.name}:{line}", argv))
        for span in _inline_code(text):
            if span.startswith("cc-kernel "):
                found.append((f"{guide.name} (inline)", shlex.split(span)[1:]))
    for logical in _logical_lines(CVM_INIT.read_text()):
        for words in _segments(logical):
            argv = _cc_kernel_argv(words)
            if argv is not None:
                found.append((str(CVM_INIT.relative_to(ROOT)), argv))
    cmd = _dockerfile_cmd()
    assert cmd[0] == "cc-kernel"
    found.append((str(DOCKERFILE.relative_to(ROOT)), cmd[1:]))
    return found


def _dockerfile_cmd() -> list[str]:
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("CMD ")]
    assert len(lines) == 1, "the Dockerfile has exactly one CMD"
    cmd = json.loads(lines[0][len("CMD "):])  # exec form: no shell inside the enclave image
    assert isinstance(cmd, list) and all(isinstance(w, str) for w in cmd)
    return cmd


def _policies() -> list[tuple[str, str]]:
    return [
        (f"{guide.name}:{line}", body)
        for guide in GUIDES
        for lang, body, line in _fenced_blocks(guide.read_text())
        if lang == "toml"
    ]


def _parse_cli(argv: list[str]) -> Any:
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"cc-kernel {shlex.join(argv)} does not parse (exit {exc.code})") from None


# --- the policies ----------------------------------------------------------------------------------------------


POLICIES = _policies()


def test_the_guides_exist_and_hold_policies() -> None:
    assert {g.name for g in GUIDES} == {"README.md", *PLATFORM_GUIDES}
    assert len(POLICIES) >= len(PLATFORM_GUIDES)


@pytest.mark.parametrize(("where", "text"), POLICIES, ids=[w for w, _ in POLICIES])
def test_every_toml_block_is_a_policy_that_loads(where: str, text: str) -> None:
    policy = load_policy(text, source=where)
    assert not policy.unsafe_allow_simulation, "a deployment guide never accepts the simulated TEE"
    assert "simulation" not in policy.platforms
    if policy.unsafe_flags:  # a weakening must be called one where it is written
        assert "WEAKENING" in text or "DISCOVERY" in text, f"{where} weakens {policy.unsafe_flags} silently"


@pytest.mark.parametrize(("guide", "platform"), sorted(PLATFORM_GUIDES.items()))
def test_each_platform_guide_has_a_strict_policy_for_its_platform(guide: str, platform: str) -> None:
    strict = [
        load_policy(text, source=where)
        for where, text in POLICIES
        if where.startswith(f"{guide}:")
    ]
    assert any(p.platforms == (platform,) and not p.unsafe_flags for p in strict), (
        f"{guide} shows no policy pinning {platform} without weakenings"
    )


# --- the commands ----------------------------------------------------------------------------------------------


COMMANDS = _doc_commands()


def test_the_guides_show_the_essential_commands() -> None:
    subcommands = {tuple(argv[:2]) for _, argv in COMMANDS}
    assert ("enclave", "serve") in subcommands
    assert ("policy", "check") in subcommands
    assert any(argv[:1] == ["attest"] and "--policy" in argv for _, argv in COMMANDS)


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[f"{w} {' '.join(a[:2])}" for w, a in COMMANDS])
def test_every_cc_kernel_command_parses(where: str, argv: list[str]) -> None:
    args = _parse_cli(argv)
    if args.command == "attest":
        parse_address(args.address)
    if args.command == "enclave":
        parse_address(args.listen)


def test_every_enclave_server_in_a_platform_guide_is_a_hardware_one() -> None:
    serves = [(where, argv) for where, argv in COMMANDS if tuple(argv[:2]) == ("enclave", "serve")]
    assert len(serves) >= 5  # the overview, three guides, the CVM init script and the Nitro image
    for where, argv in serves:
        args = _parse_cli(argv)
        assert args.platform == "hardware", f"{where}: a deployment guide starts hardware enclaves"
        assert not args.fault and args.sim_dir is None, where
        assert args.authorized_clients is not None and not args.unsafe_serve_any_client, (
            f"{where}: a deployment guide's server accepts only authorised client keys")


def test_environment_settings_in_the_guides_are_valid() -> None:
    seen = 0
    for guide in GUIDES:
        for lang, body, _line in _fenced_blocks(guide.read_text()):
            if lang != "bash":
                continue
            for logical in _logical_lines(body):
                for name, value in _env_assignments(logical):
                    if name == "CC_KERNEL_ENCLAVE":
                        parse_address(value)
                        seen += 1
                    elif name == "CC_KERNEL_POLICY":
                        assert value.endswith(".toml")
    assert seen >= len(PLATFORM_GUIDES)


def test_the_nitro_image_listens_on_vsock_any() -> None:
    argv = _dockerfile_cmd()
    listen = parse_address(argv[argv.index("--listen") + 1])
    assert str(listen) == "vsock://any:5005"
    assert "--debug-mode" not in DOCKERFILE.read_text().split("CMD")[-1]


def test_the_confidential_vm_init_is_valid_shell() -> None:
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh on this machine to check deploy/cvm/init's syntax")
    proc = subprocess.run([sh, "-n", str(CVM_INIT)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert CVM_INIT.stat().st_mode & 0o111, "deploy/cvm/init must be executable"


def test_every_fenced_block_says_its_language() -> None:
    for guide in GUIDES:
        for lang, _body, line in _fenced_blocks(guide.read_text()):
            assert lang in BLOCK_LANGUAGES, f"{guide.name}:{line}: fenced block language {lang!r}"


def test_relative_links_between_guides_resolve() -> None:
    for guide in GUIDES:
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", guide.read_text()):
            assert (guide.parent / target).is_file(), f"{guide.name} links to missing {target}"


# --- the Gramine manifest template -----------------------------------------------------------------------------

#: Dummy values for the template's expressions (gramine-manifest fills them from Gramine, Python and -D).
TEMPLATE_VALUES = {
    "gramine.libos": "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so",
    "gramine.runtimedir()": "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc",
    "python.stdlib": "/usr/lib/python3.11",
    "entrypoint": "/usr/bin/python3.11",
    "arch_libdir": "/lib/x86_64-linux-gnu",
    "cc_site": "/opt/cc-kernel/site",
    "listen": "tcp://0.0.0.0:7800",
    "authorized_clients": "/opt/cc-kernel/authorized_clients",
}

#: Keys Gramine's manifest schema accepts in the tables the template uses (gramine python/graminelibos/
#: manifest_check.py); a misspelt or retired key (e.g. sgx.thread_num) is caught here, not at signing time.
GRAMINE_KEYS = {
    "": {"loader", "libos", "fs", "sgx", "sys"},
    "loader": {"entrypoint", "argv", "argv_src_file", "env", "env_src_file", "gid", "uid", "log_file", "log_level",
               "insecure__use_cmdline_argv", "insecure__use_host_env", "insecure__disable_aslr"},
    "loader.entrypoint": {"uri", "sha256"},
    "libos": {"entrypoint", "check_invalid_pointers"},
    "fs": {"mounts", "root", "start_dir", "insecure__keys"},
    "sgx": {"allowed_files", "cpu_features", "debug", "edmm_enable", "enable_stats", "enclave_size",
            "file_check_policy", "insecure__allow_memfaults_without_exinfo", "insecure__rpc_thread_num",
            "isvprodid", "isvsvn", "max_threads", "preheat_enclave", "profile", "ra_client_linkable",
            "ra_client_spid", "remote_attestation", "seal_key", "trusted_files", "use_exinfo", "vtune_profile",
            "trusted_files_cache_size"},
    "sys": {"allowed_ioctls", "brk", "disallow_subprocesses", "enable_extra_runtime_domain_names_conf",
            "enable_sigterm_injection", "experimental__enable_flock", "insecure__allow_eventfd", "ioctl_structs",
            "debug__mock_syscalls", "stack", "fds"},
}


def _rendered_template() -> str:
    text = TEMPLATE.read_text()
    assert "{%" not in text and "{#" not in text, "keep the template free of Jinja statements"
    unknown: set[str] = set()

    def fill(match: re.Match[str]) -> str:
        expr = match.group(1).strip()
        if expr not in TEMPLATE_VALUES:
            unknown.add(expr)
            return ""
        return TEMPLATE_VALUES[expr]

    rendered = re.sub(r"\{\{(.*?)\}\}", fill, text)
    assert not unknown, f"template expressions without a dummy value here: {sorted(unknown)}"
    return rendered


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return tomllib.loads(_rendered_template())


def test_the_manifest_uses_only_keys_gramine_knows(manifest: dict[str, Any]) -> None:
    for table, allowed in GRAMINE_KEYS.items():
        value: Any = manifest
        for part in filter(None, table.split(".")):
            value = value.get(part, {})
        assert set(value) <= allowed, f"unknown keys in [{table or 'top level'}]: {sorted(set(value) - allowed)}"


def test_the_manifest_is_a_production_dcap_enclave(manifest: dict[str, Any]) -> None:
    sgx, loader, sys_ = manifest["sgx"], manifest["loader"], manifest.get("sys", {})
    assert sgx["debug"] is False
    assert sgx["remote_attestation"] == "dcap"
    assert sgx.get("file_check_policy", "strict") == "strict"
    assert loader["log_level"] == "error"
    for debug_only in ("enable_stats", "profile", "vtune_profile"):
        assert debug_only not in sgx
    assert "enable_extra_runtime_domain_names_conf" not in sys_  # the enclave serves on an IP, resolves nothing
    assert sgx["max_threads"] >= 16
    assert sgx["enclave_size"].endswith("G") and int(sgx["enclave_size"][:-1]) >= 2


def test_the_host_can_inject_no_code_arguments_or_environment(manifest: dict[str, Any]) -> None:
    sgx, loader, fs = manifest["sgx"], manifest["loader"], manifest["fs"]
    assert "allowed_files" not in sgx, "allowed files are not hashed: the host could swap them"
    assert "insecure__keys" not in fs
    for insecure in ("insecure__use_cmdline_argv", "insecure__use_host_env", "argv_src_file", "env_src_file"):
        assert insecure not in loader
    assert all(not isinstance(v, dict) or "passthrough" not in v for v in loader.get("env", {}).values())
    trusted = [t if isinstance(t, str) else t["uri"] for t in sgx["trusted_files"]]
    for mount in fs["mounts"]:
        kind = mount.get("type", "chroot")
        assert kind in ("chroot", "tmpfs"), f"mount {mount['path']} of type {kind}"
        if kind == "chroot":  # every host path the enclave sees is hashed into the manifest
            uri = mount["uri"]
            assert any(t == uri or t == uri.rstrip("/") + "/" for t in trusted), f"{uri} is not a trusted file"
    assert loader["entrypoint"]["uri"] in trusted
    assert "file:" + manifest["libos"]["entrypoint"] in trusted
    assert any(m.get("type") == "tmpfs" and m["path"] == "/tmp" for m in fs["mounts"])


def test_the_manifest_runs_the_hardware_enclave_module(manifest: dict[str, Any]) -> None:
    from cc_kernel.enclave.process import _parse

    argv = manifest["loader"]["argv"]
    assert argv[:3] == [TEMPLATE_VALUES["entrypoint"], "-m", "cc_kernel.enclave"]
    args = argv[3:]
    assert args[args.index("--platform") + 1] == "hardware"
    parse_address(args[args.index("--listen") + 1])
    parsed = _parse(args)
    assert parsed.platform == "hardware" and parsed.listen == args[args.index("--listen") + 1]
    assert str(parsed.authorized_clients) == "/etc/cc-kernel/authorized_clients" and not parsed.unsafe_serve_any_client
    mounts = {m["path"]: m.get("uri") for m in manifest["fs"]["mounts"]}
    assert mounts["/etc/cc-kernel/authorized_clients"] in manifest["sgx"]["trusted_files"]
    assert parsed.fault == [] and parsed.sim_dir is None
