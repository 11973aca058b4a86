"""Debian's Prometheus Alertmanager for notifications: its config, written from Trackside's, and
a launcher like the one for Kafka.

Trackside does no routing, grouping, repeating, inhibition or silencing itself: the alert
service posts alerts to Alertmanager (`gateway.alerts.notify`), and Alertmanager tells people.
A notification file (`notifications.yaml`, validated once, errors naming file and key) says who
is told what; `alertmanager_config()` turns it into `alertmanager.yml`.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway import GatewayError
from gateway.alerts.notify import FLAG_ALERT
from gateway.alerts.rules import Duration, Severity, load_model
from gateway.localkafka import free_port, stop_pid

__all__ = [
    "ALERTMANAGER_BINARY",
    "DEFAULT_NOTIFICATIONS",
    "DEFAULT_PORT",
    "AlertmanagerError",
    "Inhibit",
    "LocalAlertmanager",
    "NotificationConfig",
    "Receiver",
    "Route",
    "Smtp",
    "alertmanager_binary",
    "alertmanager_config",
    "load_notifications",
]

ALERTMANAGER_BINARY = "/usr/bin/prometheus-alertmanager"
DEFAULT_NOTIFICATIONS = Path(__file__).resolve().parent / "alerts" / "notifications.yaml"
# Alertmanager's own default (9093) is the KRaft controller port of `trackside kafka up`.
DEFAULT_PORT = 9094
STALE_KIND = "stale"  # the `kind` label of stale-data alerts (gateway.alerts.rules.StaleRule)

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
TrainId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
Email = Annotated[str, Field(pattern=r"^[^@\s\"]+@[^@\s\"]+$")]


class AlertmanagerError(GatewayError):
    """Alertmanager is missing, would not start, or did not answer."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Smtp(_Frozen):
    """The mail server every `email` receiver sends through."""

    smarthost: str = Field(pattern=r"^[^:\s]+:\d+$", description="host:port")
    sender: Email = Field(alias="from")
    require_tls: bool = True
    username: str | None = None
    password: SecretStr | None = None


class Receiver(_Frozen):
    """Who is told: webhook URLs and e-mail addresses; resolved alerts too unless turned off."""

    name: Name
    webhook: tuple[HttpUrl, ...] = ()
    email: tuple[Email, ...] = ()
    send_resolved: bool = True

    @model_validator(mode="after")
    def _somewhere(self) -> Receiver:
        if not self.webhook and not self.email:
            raise ValueError("give at least one `webhook` URL or `email` address")
        return self


_CLOCK = r"^([01]\d|2[0-3]):[0-5]\d$"
Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


class TimeInterval(_Frozen):
    """A recurring window (nightly depot hours): notifications of the routes that name it in
    `mute_during` wait until it ends. `start` after `end` runs over midnight; `weekdays` then
    applies to both parts (Monday 22:00-24:00 and Monday 00:00-05:00), as in Alertmanager."""

    name: Name
    start: str = Field(pattern=_CLOCK, description="HH:MM")
    end: str = Field(pattern=_CLOCK, description="HH:MM")
    weekdays: tuple[Weekday, ...] = ()  # none: every day
    location: str = Field("Local", description="IANA time zone, e.g. Europe/Berlin")

    @model_validator(mode="after")
    def _not_empty(self) -> TimeInterval:
        if self.start == self.end:
            raise ValueError("`start` and `end` are equal: the window would be empty")
        return self


class Route(_Frozen):
    """Alerts of these severities (and trains) go to `receiver` instead of the default."""

    receiver: Name
    severities: tuple[Severity, ...] = ()
    trains: tuple[TrainId, ...] = ()
    mute_during: tuple[Name, ...] = ()  # time intervals in which this route tells nobody
    # Alertmanager's `continue`: true, the routes after this one are tried as well. The default
    # receiver only gets what no route took.
    try_next: bool = Field(False, alias="continue")

    @model_validator(mode="after")
    def _matches_something(self) -> Route:
        if not self.severities and not self.trains:
            raise ValueError("give `severities` or `trains` (or both) to match")
        return self


class Inhibit(_Frozen):
    """Alertmanager inhibition rules that Trackside writes; each can be turned off."""

    # A critical alert mutes warnings and infos of the same train, device and sensor.
    critical_over_warning: bool = True
    # A stale (offline) device mutes the sensor alerts of that device.
    offline_over_sensors: bool = True
    # A train flagged for maintenance mutes the alerts that flag (the flag's own alert, which
    # names them, is the one notification; they are told again only if the flag is cleared).
    flagged_over_its_alerts: bool = True


class NotificationConfig(_Frozen):
    """A notification file: receivers, routes, grouping and inhibition."""

    receivers: tuple[Receiver, ...]
    default_receiver: Name
    routes: tuple[Route, ...] = ()
    smtp: Smtp | None = Field(None, validate_default=True)
    group_by: tuple[str, ...] = ("train",)
    group_wait: Duration = 30.0
    group_interval: Duration = 300.0
    repeat_interval: Duration = 4 * 3600.0
    resolve_timeout: Duration = 300.0
    inhibit: Inhibit = Inhibit()
    time_intervals: tuple[TimeInterval, ...] = ()
    # Time intervals in which the default receiver is not told (routes have their own).
    mute_during: tuple[Name, ...] = ()

    @model_validator(mode="after")
    def _intervals_known(self) -> NotificationConfig:
        names = [t.name for t in self.time_intervals]
        uses = [("mute_during", self.mute_during)] + [
            (f"routes[{i}].mute_during", r.mute_during) for i, r in enumerate(self.routes)
        ]
        for where, named in uses:
            for name in named:
                if name not in names:
                    known = ", ".join(names) or "none"
                    raise ValueError(
                        f"{where}: no time interval is named {name!r}; time_intervals: {known}"
                    )
        return self

    # Field validators, so that a mistake is reported at its key; each sees the fields above it.
    @field_validator("receivers")
    @classmethod
    def _unique(cls, receivers: tuple[Receiver, ...]) -> tuple[Receiver, ...]:
        if not receivers:
            raise ValueError("give at least one receiver")
        names = [r.name for r in receivers]
        doubles = sorted({n for n in names if names.count(n) > 1})
        if doubles:
            raise ValueError(f"receiver names must be unique; repeated: {', '.join(doubles)}")
        return receivers

    @field_validator("default_receiver")
    @classmethod
    def _default_known(cls, name: str, info: ValidationInfo) -> str:
        _known(name, info)
        return name

    @field_validator("routes")
    @classmethod
    def _routes_known(cls, routes: tuple[Route, ...], info: ValidationInfo) -> tuple[Route, ...]:
        for i, route in enumerate(routes):
            _known(route.receiver, info, f"routes[{i}].receiver: ")
        return routes

    @field_validator("smtp")
    @classmethod
    def _smtp_for_email(cls, smtp: Smtp | None, info: ValidationInfo) -> Smtp | None:
        mailing = [r.name for r in info.data.get("receivers", ()) if r.email]
        if smtp is None and mailing:
            raise ValueError(
                f"the e-mail receivers ({', '.join(mailing)}) need `smtp:` with smarthost and from"
            )
        return smtp


def _known(name: str, info: ValidationInfo, where: str = "") -> None:
    names = [r.name for r in info.data.get("receivers", ())]
    if names and name not in names:
        raise ValueError(f"{where}no receiver is named {name!r}; receivers: {', '.join(names)}")


def load_notifications(path: Path) -> NotificationConfig:
    """Read and validate a notification file; errors name the file and the key."""
    return load_model(path, NotificationConfig, "notification file")


def _duration(seconds: float) -> str:
    """Alertmanager's duration syntax: `4h`, `5m`, `30s`, or `1500ms`."""
    ms = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0 and ms > 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _time_interval(interval: TimeInterval) -> dict[str, Any]:
    """Alertmanager's form: a window over midnight is two ranges (22:00-24:00, 00:00-05:00)."""
    if interval.start < interval.end:
        ranges = [{"start_time": interval.start, "end_time": interval.end}]
    else:
        ranges = [
            {"start_time": interval.start, "end_time": "24:00"},
            {"start_time": "00:00", "end_time": interval.end},
        ]
    spec: dict[str, Any] = {"times": ranges, "location": interval.location}
    if interval.weekdays:
        spec["weekdays"] = list(interval.weekdays)
    return {"name": interval.name, "time_intervals": [spec]}


def alertmanager_config(config: NotificationConfig) -> dict[str, Any]:
    """The `alertmanager.yml` content for `config` (a dict; `yaml.safe_dump` it)."""
    receivers: list[dict[str, Any]] = []
    for receiver in config.receivers:
        entry: dict[str, Any] = {"name": receiver.name}
        if receiver.webhook:
            entry["webhook_configs"] = [
                {"url": str(url), "send_resolved": receiver.send_resolved}
                for url in receiver.webhook
            ]
        if receiver.email:
            entry["email_configs"] = [
                {"to": address, "send_resolved": receiver.send_resolved}
                for address in receiver.email
            ]
        receivers.append(entry)
    routes: list[dict[str, Any]] = []
    for route in config.routes:
        matchers = []
        if route.severities:
            matchers.append(f'severity=~"{"|".join(route.severities)}"')
        if route.trains:
            matchers.append(f'train=~"{"|".join(route.trains)}"')
        entry = {"receiver": route.receiver, "matchers": matchers, "continue": route.try_next}
        if route.mute_during:
            entry["mute_time_intervals"] = list(route.mute_during)
        routes.append(entry)
    if config.mute_during:
        # Alertmanager mutes only on child routes: the default receiver gets a last, catch-all
        # route of its own that carries the mute.
        routes.append(
            {"receiver": config.default_receiver, "mute_time_intervals": list(config.mute_during)}
        )
    top: dict[str, Any] = {
        "receiver": config.default_receiver,
        "group_by": list(config.group_by),
        "group_wait": _duration(config.group_wait),
        "group_interval": _duration(config.group_interval),
        "repeat_interval": _duration(config.repeat_interval),
    }
    if routes:
        top["routes"] = routes
    inhibit: list[dict[str, Any]] = []
    if config.inhibit.critical_over_warning:
        inhibit.append(
            {
                "source_matchers": ['severity="critical"'],
                "target_matchers": ['severity=~"warning|info"'],
                "equal": ["train", "device", "sensor"],
            }
        )
    if config.inhibit.offline_over_sensors:
        inhibit.append(
            {
                "source_matchers": [f'kind="{STALE_KIND}"'],
                "target_matchers": [f'kind!="{STALE_KIND}"'],
                "equal": ["train", "device"],
            }
        )
    if config.inhibit.flagged_over_its_alerts:
        inhibit.append(
            {
                "source_matchers": [f'alertname="{FLAG_ALERT}"'],
                "target_matchers": ['flags="true"'],
                "equal": ["train"],
            }
        )
    global_: dict[str, Any] = {"resolve_timeout": _duration(config.resolve_timeout)}
    if config.smtp is not None:
        global_["smtp_smarthost"] = config.smtp.smarthost
        global_["smtp_from"] = config.smtp.sender
        global_["smtp_require_tls"] = config.smtp.require_tls
        if config.smtp.username is not None:
            global_["smtp_auth_username"] = config.smtp.username
        if config.smtp.password is not None:
            global_["smtp_auth_password"] = config.smtp.password.get_secret_value()
    result: dict[str, Any] = {"global": global_, "route": top, "receivers": receivers}
    if config.time_intervals:
        result["time_intervals"] = [_time_interval(t) for t in config.time_intervals]
    if inhibit:
        result["inhibit_rules"] = inhibit
    return result


def alertmanager_binary() -> str:
    """Debian's Alertmanager, or an AlertmanagerError saying how to install it."""
    if not os.access(ALERTMANAGER_BINARY, os.X_OK):
        raise AlertmanagerError(
            f"{ALERTMANAGER_BINARY} is not installed: `sudo apt-get install "
            "prometheus-alertmanager` (scripts/bootstrap.sh installs it)"
        )
    return ALERTMANAGER_BINARY


@dataclass(frozen=True)
class LocalAlertmanager:
    """One Alertmanager on 127.0.0.1:`port`, gossip off, whose files live in `home`."""

    home: Path
    port: int
    config: NotificationConfig | None = None  # only `start` needs it: it writes the config

    @classmethod
    def on_free_port(cls, home: Path, config: NotificationConfig) -> LocalAlertmanager:
        """An Alertmanager on a port that is free now."""
        return cls(home, free_port(), config)

    @property
    def url(self) -> str:
        """The base URL of its web API (what `alertmanager.url` of the alert service takes)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        """The generated `alertmanager.yml` (mode 600: it may hold the SMTP password)."""
        return self.home / "alertmanager.yml"

    @property
    def log_file(self) -> Path:
        """What Alertmanager printed, kept for failures."""
        return self.home / "alertmanager.log"

    def write_config(self) -> Path:
        """Write `alertmanager.yml` from the notification config."""
        if self.config is None:
            raise AlertmanagerError("no notification config to write alertmanager.yml from")
        self.home.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(alertmanager_config(self.config), sort_keys=False)
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        return self.config_file

    def argv(self) -> list[str]:
        """The command line: storage in `home`, loopback only, the cluster (gossip) off."""
        return [
            alertmanager_binary(),
            f"--config.file={self.config_file}",
            f"--storage.path={self.home / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
        ]

    def start(self, timeout: float = 30.0, detach: bool = False) -> subprocess.Popen[bytes]:
        """Write the config, start Alertmanager and wait until it is ready."""
        proc = self.spawn(detach)
        try:
            self.wait_ready(timeout, proc)
        except AlertmanagerError:
            stop_pid(proc.pid, 10.0)
            raise
        return proc

    def spawn(self, detach: bool = False, die_with_parent: bool = False) -> subprocess.Popen[bytes]:
        """Write the config and start Alertmanager without waiting (see `wait_ready`).

        `die_with_parent`: Linux sends it SIGTERM when the thread that started it ends (call
        from the main thread), even by SIGKILL, so a killed gateway leaves no Alertmanager
        holding its port behind (util-linux `setpriv --pdeathsig`; no fork-time Python code).
        """
        self.write_config()
        argv = self.argv()
        if die_with_parent:
            argv = ["setpriv", "--pdeathsig", "TERM", "--", *argv]
        with self.log_file.open("ab") as out:
            return subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=detach,
            )

    def ready(self) -> bool:
        """True when Alertmanager answers `/-/ready` with 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        """Block until Alertmanager is ready, or raise AlertmanagerError."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if proc is not None and proc.poll() is not None:
                raise AlertmanagerError(
                    f"Alertmanager exited with status {proc.returncode} while starting; "
                    f"see {self.log_file}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AlertmanagerError(
                    f"Alertmanager was not ready on {self.url} within {timeout:.0f} s; "
                    f"see {self.log_file}:\n{self.tail()}"
                )
            time.sleep(0.1)

    def tail(self, lines: int = 30) -> str:
        """The last lines of Alertmanager's log, for error messages."""
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
