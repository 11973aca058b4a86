"""`trackside doctor`'s checks on this machine's files: the gateway file, the device registry,
the TLS certificate and key, the spools (writable, free disk, backlog).

Access is judged for the user who runs the gateway (`uid`), which need not be the user running
the doctor: for that user itself, the kernel answers (`os.access`: ACLs, read-only mounts);
for another one, the mode bits, owner, groups and every parent folder answer (ACLs unseen).
"""

from __future__ import annotations

import datetime
import grp
import os
import pwd
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.config import GatewayConfig
from gateway.doctor.result import CheckResult, fail, ok, warn
from gateway.registry import Registry, RegistryError

__all__ = [
    "CERT_WARN_DAYS",
    "Backlog",
    "check_certificate",
    "check_config_file",
    "check_registry",
    "check_spools",
    "may_access",
    "spool_backlog",
    "user_name",
]

CERT_WARN_DAYS = 30  # yellow from here: time to run `trackside gateway certs` again
_SEGMENT = ".seg"  # bridge.spool's segment files; read here, never written
_MAGIC = b"TSSPOOL2"  # the first bytes of a format-2 segment (bridge/spool.py)


def user_name(uid: int) -> str:
    """`name (uid N)`, or `uid N` for a user without a name."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _groups(uid: int) -> set[int]:
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return set()
    return {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}


def _bits(path: Path, uid: int, want: int) -> bool:
    if uid == 0:
        return True
    info = path.stat()
    if info.st_uid == uid:
        shift = 6
    elif info.st_gid in _groups(uid):
        shift = 3
    else:
        shift = 0
    return (info.st_mode >> shift) & want == want


def may_access(path: Path, uid: int, want: int) -> bool:
    """Whether user `uid` may `want` (os.R_OK, os.W_OK | os.X_OK, ...) an existing `path`."""
    if uid == os.geteuid():
        return os.access(path, want)
    try:
        if want & os.W_OK and os.statvfs(path).f_flag & os.ST_RDONLY:
            return False
        parents = path.absolute().parents
        return all(_bits(p, uid, os.X_OK) for p in parents) and _bits(path, uid, want)
    except OSError:
        return False


def _others_may_read(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IROTH)


def _private_file(kind: str, name: str, path: Path, uid: int, holds: str) -> CheckResult | None:
    """A red line when the gateway's user cannot read `path`, a yellow one when everybody can;
    None when both are right."""
    who = user_name(uid)
    if not path.is_file():
        return fail(kind, name, f"{path} does not exist", f"restore {path} or correct its key")
    if not may_access(path, uid, os.R_OK):
        return fail(
            kind,
            name,
            f"{path}: {who}, who runs the gateway, cannot read it",
            f"`chown {_login(uid)} {path}` and `chmod 600 {path}` (or give it the "
            "gateway's group and mode 640)",
        )
    if _others_may_read(path):
        return warn(
            kind,
            name,
            f"{path}: every user may read it, and it holds {holds}",
            f"`chmod o-rwx {path}`",
        )
    return None


def _login(uid: int) -> str:
    # For chown: the name, or the number of a user without one.
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_config_file(path: Path, uid: int) -> list[CheckResult]:
    """The gateway file: readable by the gateway's user (it is read at every start), not by
    everybody (tokens, passwords)."""
    problem = _private_file("config", "config file", path, uid, "tokens and passwords")
    return [problem or ok("config", "config file", f"{path}: mode {_mode(path)}, readable")]


def _mode(path: Path) -> str:
    return f"{stat.S_IMODE(path.stat().st_mode):o}"


def check_registry(config: GatewayConfig, uid: int) -> list[CheckResult]:
    """The embedded broker's device registry: there, readable by the gateway, valid, private."""
    broker = config.broker
    if not broker.enabled:
        return []
    if broker.registry is None:
        return [
            warn(
                "registry",
                "device registry",
                "none configured: any client may connect and publish as any device",
                "set broker.registry and add devices (`trackside devices add`); see "
                "docs/gateway.md",
            )
        ]
    path = broker.registry
    problem = _private_file("registry", "device registry", path, uid, "password hashes")
    if problem is not None and problem.status == "fail":
        return [problem]
    try:
        accounts = Registry(path).accounts.values()
    except RegistryError as exc:
        return [
            fail(
                "registry",
                "device registry",
                f"the broker cannot read it: {exc}",
                f"correct {path} (or restore it from a backup); devices cannot connect meanwhile",
            )
        ]
    live = [a for a in accounts if not a.revoked]
    devices = sum(a.kind == "device" for a in live)
    detail = f"{path}: {devices} device(s), {len(live) - devices} service(s), mode {_mode(path)}"
    return [problem or ok("registry", "device registry", detail)]


def check_certificate(config: GatewayConfig, uid: int) -> list[CheckResult]:
    """The TLS listener's certificate and key: readable, valid now, days to expiry, a pair."""
    tls = config.broker.tls
    if not config.broker.enabled or tls is None:
        return []
    name = "tls certificate"
    key_line = _private_file("tls", "tls key", tls.key_file, uid, "the private key")
    lines = [key_line or ok("tls", "tls key", f"{tls.key_file}: mode {_mode(tls.key_file)}")]
    cert_problem = _private_file("tls", name, tls.cert_file, uid, "")
    if cert_problem is not None and cert_problem.status == "fail":
        return [*lines, cert_problem]
    if lines[0].status == "fail":
        return lines
    return [*lines, _certificate(tls.cert_file, tls.key_file)]


def _certificate(cert_file: Path, key_file: Path) -> CheckResult:
    name = "tls certificate"
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return fail(
            "tls",
            name,
            f"{cert_file} or {key_file}: {exc}",
            "make new ones: `trackside gateway certs --out DIR --host NAME`",
        )
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        return fail(
            "tls",
            name,
            f"{key_file} is not the key of {cert_file}",
            "put the matching key in place, or make both again (`trackside gateway certs`)",
        )
    now = datetime.datetime.now(datetime.UTC)
    left = cert.not_valid_after_utc - now
    detail = (
        f"{cert_file}: valid until {cert.not_valid_after_utc:%Y-%m-%d}, {left.days} day(s) left"
    )
    renew = (
        "make new ones: `trackside gateway certs --out DIR --host NAME` (a new CA too: give "
        "the devices the new ca.pem), then restart the gateway"
    )
    if now < cert.not_valid_before_utc:
        return fail(
            "tls",
            name,
            f"{cert_file}: not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the clock)",
            renew,
        )
    if left.total_seconds() <= 0:
        return fail(
            "tls",
            name,
            f"{cert_file}: expired on "
            f"{cert.not_valid_after_utc:%Y-%m-%d}; devices refuse the connection",
            renew,
        )
    if left.days < CERT_WARN_DAYS:
        return warn("tls", name, detail, renew)
    return ok("tls", name, detail)


@dataclass(frozen=True)
class Backlog:
    """What a spool holds that Kafka does not have yet (format-2 frame bytes, markers not
    counted), in how many segment files, and the size of its quarantine file."""

    bytes: int
    segments: int
    quarantined: int


def spool_backlog(path: Path) -> Backlog:
    """Read a spool's folder without changing anything (a running gateway may be writing)."""
    sizes: dict[int, int] = {}
    starts: dict[int, int] = {}
    for segment_file in path.glob(f"*{_SEGMENT}"):
        try:
            number = int(segment_file.stem)
            sizes[number] = segment_file.stat().st_size
            with segment_file.open("rb") as data:
                starts[number] = len(_MAGIC) if data.read(len(_MAGIC)) == _MAGIC else 0
        except (ValueError, OSError):
            continue  # not a segment, or gone meanwhile (replayed and deleted)
    quarantine = path / "quarantine"
    quarantined = quarantine.stat().st_size if quarantine.exists() else 0
    if not sizes:
        return Backlog(0, 0, quarantined)
    head_segment, head_offset = min(sizes), starts[min(sizes)]
    try:
        fields = (path / "head").read_bytes().split()
        if int(fields[0]) in sizes:
            head_segment, head_offset = int(fields[0]), int(fields[1])
    except (OSError, ValueError, IndexError):
        pass  # no head yet (nothing committed), or damaged: the spool replays from the oldest
    held = [s for s in sizes if s >= head_segment]
    total = sum(sizes[s] - starts[s] for s in held) - (head_offset - starts[head_segment])
    return Backlog(max(total, 0), len(held), quarantined)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_spools(config: GatewayConfig, uid: int) -> list[CheckResult]:
    """Per connector: the spool folder writable by the gateway, room on its disk for the
    spools that share it (up to spool.max_bytes each), and what waits in it for Kafka."""
    results: list[CheckResult] = []
    room: dict[int, int] = {}  # disk (st_dev) -> bytes the spools on it may still grow by
    disks: list[tuple[str, Path, int, int]] = []
    for connector in config.connectors:
        spool = connector.spool
        name = f"spool {connector.name}"
        folder = _existing(spool.path)
        where = "" if folder == spool.path else f" (made at start in {folder})"
        if not may_access(folder, uid, os.W_OK | os.X_OK):
            results.append(
                fail(
                    "spool",
                    name,
                    f"{spool.path}{where}: {user_name(uid)}, who runs "
                    "the gateway, cannot write there; a Kafka outage would hold "
                    "every reading unacknowledged",
                    f"`chown -R {_login(uid)} {folder}` and check the mount is not "
                    "read-only (`findmnt -T` the folder), or choose another "
                    "spool.path",
                )
            )
            continue
        backlog = spool_backlog(spool.path) if folder == spool.path else Backlog(0, 0, 0)
        results.append(_backlog_result(name, spool.path, backlog, spool.max_bytes))
        device = folder.stat().st_dev
        room[device] = room.get(device, 0) + max(spool.max_bytes - backlog.bytes, 0)
        disks.append((connector.name, folder, device, spool.segment_bytes))
    for connector_name, folder, device, segment_bytes in disks:
        free = shutil.disk_usage(folder).free
        name = f"spool {connector_name} disk"
        detail = (
            f"{_size(free)} free on the disk of {folder}; its spools may grow by "
            f"{_size(room[device])} more (spool.max_bytes)"
        )
        fix = (
            "free disk space or move spool.path to a larger disk; or lower spool.max_bytes "
            "to what the disk holds"
        )
        if free < segment_bytes:
            results.append(fail("spool", name, f"{detail}: not even one segment fits", fix))
        elif free < room[device]:
            results.append(
                warn(
                    "spool",
                    name,
                    f"{detail}: a long outage fills the disk "
                    "before the spool (readings then wait unacknowledged)",
                    fix,
                )
            )
        else:
            results.append(ok("spool", name, detail))
    return results


def _backlog_result(name: str, path: Path, backlog: Backlog, max_bytes: int) -> CheckResult:
    detail = (
        f"{path}: writable; {_size(backlog.bytes)} wait for Kafka ({backlog.segments} "
        f"segment file(s), spool.max_bytes {_size(max_bytes)})"
    )
    if backlog.quarantined:
        return warn(
            "spool",
            name,
            f"{detail}; {_size(backlog.quarantined)} of damaged frames "
            "set aside in quarantine, not replayed",
            "the readings in "
            f"{path / 'quarantine'} are not in Kafka: see docs/operations.md (the "
            "spool's disk), then move the file away",
        )
    if backlog.bytes >= max_bytes:
        return fail(
            "spool",
            name,
            f"{detail}: full, readings wait unacknowledged",
            "bring Kafka back (the spool replays by itself), or raise spool.max_bytes",
        )
    if backlog.bytes:
        return warn(
            "spool",
            name,
            detail,
            "the gateway replays it once Kafka answers; if Kafka "
            "answers and it does not shrink, see the connector line and the log",
        )
    return ok("spool", name, detail)
