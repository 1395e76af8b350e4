"""Monitor: check a worker's sandbox report against what the kernel shows from outside.

The worker's report (``WorkerReady.protections``: part -> ``{"in_force": bool, "detail": str}``, the ``uid``
entry also ``uid``/``gid``) is a claim made by the process that runs hostile code. Before believing it the
monitor compares it with ``/proc/PID/status``: ``NoNewPrivs``, ``Seccomp`` (2 = filter mode), the real,
effective, saved and filesystem ``Uid``/``Gid``, ``Groups`` and the capability sets (``CapEff``, ``CapPrm``,
``CapInh``, ``CapAmb`` always; ``CapBnd`` too when the worker stays uid 0). Landlock leaves no trace there, so a
Landlock claim is neither confirmed nor contradicted here.

Invariants: :func:`status_contradictions` is pure (text in, findings out); :func:`check_from_outside` only
adds the file read, and a status that cannot be read contradicts the report as a whole (fail closed). Every
in-force claim is checked after the worker applied its sandbox; each part is irreversible, and the pid cannot
be reused while the monitor (the worker's parent) has not reaped it.
"""

from __future__ import annotations

from collections.abc import Mapping

_CAP_SETS = ("CapEff", "CapPrm", "CapInh", "CapAmb")


def parse_status(text: str) -> dict[str, str]:
    """``/proc/PID/status`` as ``{field: value}`` with surrounding whitespace removed."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


def _claimed(report: Mapping[str, object], part: str, findings: list[str]) -> Mapping[str, object] | None:
    entry = report.get(part)
    if entry is None:
        return None
    if not isinstance(entry, Mapping) or not isinstance(entry.get("in_force"), bool):
        findings.append(f"{part}: malformed report entry {entry!r}")
        return None
    return entry if entry["in_force"] else None


def _field(status: Mapping[str, str], name: str, part: str, findings: list[str]) -> str | None:
    value = status.get(name)
    if value is None:
        findings.append(f"{part}: claimed in force, but the status has no {name} line")
    return value


def _zero_caps(status: Mapping[str, str], names: tuple[str, ...], part: str, findings: list[str]) -> None:
    for name in names:
        value = _field(status, name, part, findings)
        if value is None:
            continue
        try:
            held = int(value, 16)
        except ValueError:
            findings.append(f"{part}: {name} is not hexadecimal: {value!r}")
            continue
        if held:
            findings.append(f"{part}: claimed in force, but {name} is {value} (expected 0)")


def _ids(status: Mapping[str, str], name: str, part: str, findings: list[str]) -> list[str] | None:
    value = _field(status, name, part, findings)
    return None if value is None else value.split()


def status_contradictions(status_text: str, report: Mapping[str, object]) -> list[str]:
    """The claims in ``report`` that the status text contradicts, one sentence each; empty when none is.

    Checked: ``no_new_privs`` (NoNewPrivs 1), ``seccomp`` (Seccomp 2), ``uid`` (all four Uid and Gid fields
    equal the claimed ``uid``/``gid``, no supplementary group, no capability in any set including the bounding
    set), ``capabilities`` (no effective, permitted, inheritable or ambient capability; an empty bounding set
    too when the worker's uid is 0). A malformed entry counts as a contradiction. Pure.
    """
    status = parse_status(status_text)
    findings: list[str] = []
    if _claimed(report, "no_new_privs", findings) is not None:
        value = _field(status, "NoNewPrivs", "no_new_privs", findings)
        if value is not None and value != "1":
            findings.append(f"no_new_privs: claimed in force, but NoNewPrivs is {value} (expected 1)")
    if _claimed(report, "seccomp", findings) is not None:
        value = _field(status, "Seccomp", "seccomp", findings)
        if value is not None and value != "2":
            findings.append(f"seccomp: claimed in force, but Seccomp is {value} (expected 2, filter mode)")
    uid_claim = _claimed(report, "uid", findings)
    if uid_claim is not None:
        want_uid, want_gid = uid_claim.get("uid"), uid_claim.get("gid")
        if not isinstance(want_uid, int) or not isinstance(want_gid, int) or isinstance(want_uid, bool):
            findings.append(f"uid: claimed in force without integer uid/gid (got {want_uid!r}, {want_gid!r})")
        else:
            for name, want in (("Uid", want_uid), ("Gid", want_gid)):
                got = _ids(status, name, "uid", findings)
                if got is not None and got != [str(want)] * 4:
                    findings.append(f"uid: claimed {name.lower()} {want}, but {name} is {' '.join(got)}")
            groups = status.get("Groups")
            if groups:
                findings.append(f"uid: claimed no supplementary groups, but Groups is {groups}")
        _zero_caps(status, (*_CAP_SETS, "CapBnd"), "uid", findings)
    if _claimed(report, "capabilities", findings) is not None:
        uids = _ids(status, "Uid", "capabilities", findings) or []
        _zero_caps(status, (*_CAP_SETS, "CapBnd") if "0" in uids else _CAP_SETS, "capabilities", findings)
    return findings


def check_from_outside(pid: int, report: Mapping[str, object]) -> list[str]:
    """Read ``/proc/PID/status`` and return the claims in the worker's ``report`` that it contradicts.

    An unreadable status (the worker is gone, or ``/proc`` is hidden) is one finding that names the error:
    nothing in the report can then be believed.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        return [f"cannot read /proc/{pid}/status ({exc.strerror}); no claim of the report can be confirmed"]
    return status_contradictions(text, report)
