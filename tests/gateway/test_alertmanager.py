"""gateway/alertmanager.py: alertmanager.yml from a notification file, and the launcher."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gateway.alertmanager import (
    DEFAULT_NOTIFICATIONS,
    NotificationConfig,
    alertmanager_config,
    load_notifications,
)
from gateway.alerts.rules import RuleError
from gateway.cli import build_app
from gateway.localkafka import free_port
from tests.fixtures.alertmanager import AlertmanagerHandle
from tests.fixtures.waiting import wait_until

FULL = """
receivers:
  - name: desk
    webhook: [http://127.0.0.1:5001/hook]
    email: [desk@example.org]
  - name: on-call
    email: [oncall@example.org]
    send_resolved: false
default_receiver: desk
routes:
  - {receiver: on-call, severities: [critical], trains: [T101, T102], continue: true,
     mute_during: [weekend]}
smtp: {smarthost: "mail.example.org:587", from: trackside@example.org, username: ts, password: pw}
group_wait: 1500ms
group_interval: 2m
time_intervals:
  - {name: depot-nights, start: "22:00", end: "05:00", location: Europe/Berlin}
  - {name: weekend, start: "00:00", end: "23:59", weekdays: [saturday, sunday]}
mute_during: [depot-nights]
"""


def _load(tmp_path: Path, text: str) -> NotificationConfig:
    path = tmp_path / "notifications.yaml"
    path.write_text(text)
    return load_notifications(path)


def test_the_default_file_loads_and_groups_by_train() -> None:
    config = load_notifications(DEFAULT_NOTIFICATIONS)
    written = alertmanager_config(config)
    assert written["route"]["group_by"] == ["train"]
    assert written["route"]["receiver"] == config.default_receiver
    assert len(written["inhibit_rules"]) == 3


def test_receivers_routes_smtp_and_durations_are_written(tmp_path: Path) -> None:
    written = alertmanager_config(_load(tmp_path, FULL))
    assert written["global"] == {
        "resolve_timeout": "5m",
        "smtp_smarthost": "mail.example.org:587",
        "smtp_from": "trackside@example.org",
        "smtp_require_tls": True,
        "smtp_auth_username": "ts",
        "smtp_auth_password": "pw",
    }
    assert written["route"] == {
        "receiver": "desk",
        "group_by": ["train"],
        "group_wait": "1500ms",
        "group_interval": "2m",
        "repeat_interval": "4h",
        "routes": [
            {
                "receiver": "on-call",
                "matchers": ['severity=~"critical"', 'train=~"T101|T102"'],
                "continue": True,
                "mute_time_intervals": ["weekend"],
            },
            {"receiver": "desk", "mute_time_intervals": ["depot-nights"]},
        ],
    }
    assert written["receivers"] == [
        {
            "name": "desk",
            "webhook_configs": [{"url": "http://127.0.0.1:5001/hook", "send_resolved": True}],
            "email_configs": [{"to": "desk@example.org", "send_resolved": True}],
        },
        {
            "name": "on-call",
            "email_configs": [{"to": "oncall@example.org", "send_resolved": False}],
        },
    ]


def test_recurring_windows_become_time_intervals_and_mute_routes(tmp_path: Path) -> None:
    written = alertmanager_config(_load(tmp_path, FULL))
    assert written["time_intervals"] == [
        {
            "name": "depot-nights",
            "time_intervals": [
                {
                    "times": [
                        {"start_time": "22:00", "end_time": "24:00"},
                        {"start_time": "00:00", "end_time": "05:00"},
                    ],
                    "location": "Europe/Berlin",
                }
            ],
        },
        {
            "name": "weekend",
            "time_intervals": [
                {
                    "times": [{"start_time": "00:00", "end_time": "23:59"}],
                    "location": "Local",
                    "weekdays": ["saturday", "sunday"],
                }
            ],
        },
    ]
    on_call, default = written["route"]["routes"]
    assert on_call["mute_time_intervals"] == ["weekend"]
    # the root route cannot mute: the default receiver's mute is a last catch-all route
    assert default == {"receiver": "desk", "mute_time_intervals": ["depot-nights"]}


def test_inhibition_critical_over_warning_offline_over_sensors_and_the_flag(
    tmp_path: Path,
) -> None:
    written = alertmanager_config(_load(tmp_path, FULL))
    assert written["inhibit_rules"] == [
        {
            "source_matchers": ['severity="critical"'],
            "target_matchers": ['severity=~"warning|info"'],
            "equal": ["train", "device", "sensor"],
        },
        {
            "source_matchers": ['kind="stale"'],
            "target_matchers": ['kind!="stale"'],
            "equal": ["train", "device"],
        },
        {
            "source_matchers": ['alertname="train_flagged"'],
            "target_matchers": ['flags="true"'],
            "equal": ["train"],
        },
    ]
    off = FULL + (
        "inhibit: {critical_over_warning: false, offline_over_sensors: false, "
        "flagged_over_its_alerts: false}\n"
    )
    assert "inhibit_rules" not in alertmanager_config(_load(tmp_path, off))


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (FULL.replace("http://127.0.0.1:5001/hook", "not a url"), "receivers[0] (desk).webhook[0]"),
        (FULL.replace("desk@example.org", "desk"), "receivers[0] (desk).email[0]"),
        (FULL.replace("group_wait: 1500ms", "group_wait: soon"), "group_wait: Value error"),
        (FULL.replace("severities: [critical]", "severities: [urgent]"), "routes[0].severities[0]"),
        (
            FULL.replace("receiver: on-call,", "receiver: oncall,"),
            "routes: Value error, routes[0].receiver: no receiver is named 'oncall'; "
            "receivers: desk, on-call",
        ),
        (
            FULL.replace("default_receiver: desk", "default_receiver: nobody"),
            "default_receiver: Value error, no receiver is named 'nobody'",
        ),
        (FULL.replace("smtp: {", "smtq: {"), "smtq: Extra inputs"),
        (
            FULL.split("smtp:", maxsplit=1)[0],
            "smtp: Value error, the e-mail receivers (desk, on-call) need `smtp:`",
        ),
        ("receivers:\n  - name: x\ndefault_receiver: x\n", "receivers[0] (x): Value error, give"),
        ("receivers: []\ndefault_receiver: x\n", "receivers: Value error, give at least one"),
        (FULL.replace("name: on-call", "name: desk"), "receivers: Value error, receiver names"),
        (
            FULL.replace("mute_during: [weekend]", "mute_during: [weekends]"),
            "routes[0].mute_during: no time interval is named 'weekends'",
        ),
        (FULL.replace('end: "05:00"', 'end: "22:00"'), "time_intervals[0] (depot-nights): Value"),
        (FULL.replace('"22:00"', '"25:00"'), "time_intervals[0] (depot-nights).start"),
    ],
)
def test_mistakes_name_the_file_and_key(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(RuleError) as caught:
        _load(tmp_path, text)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'notifications.yaml'}: ")
    assert where in message


@pytest.mark.integration
def test_amtool_accepts_the_written_config(tmp_path: Path) -> None:
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(alertmanager_config(_load(tmp_path, FULL))))
    result = subprocess.run(
        ["amtool", "check-config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        # `continue` tries the later routes: with a top-level `mute_during` the default
        # receiver is the last route, so it is told as well
        (["severity=critical", "train=T101"], "on-call,desk"),
        (["severity=warning", "train=T101"], "desk"),
        (["severity=critical", "train=T9"], "desk"),  # not of the train group
    ],
)
def test_routes_by_severity_and_train_group(
    tmp_path: Path, labels: list[str], receivers: str
) -> None:
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(alertmanager_config(_load(tmp_path, FULL))))
    result = subprocess.run(
        ["amtool", "config", "routes", "test", f"--config.file={path}", *labels],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers


@pytest.mark.integration
def test_launcher_starts_alertmanager_that_takes_alerts_and_stops_it(
    tmp_path: Path, alertmanager_factory: Callable[[NotificationConfig], AlertmanagerHandle]
) -> None:
    manager = alertmanager_factory(_load(tmp_path, FULL)).start()
    assert manager.manager.config_file.stat().st_mode & 0o777 == 0o600  # holds the password
    alert = [{"labels": {"alertname": "probe", "train": "T1"}, "annotations": {"summary": "x"}}]
    request = urllib.request.Request(
        f"{manager.url}/api/v2/alerts",
        data=json.dumps(alert).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200

    def listed() -> bool:
        with urllib.request.urlopen(f"{manager.url}/api/v2/alerts", timeout=5) as answer:
            return any(a["labels"]["train"] == "T1" for a in json.loads(answer.read()))

    wait_until(listed, 10, "the posted alert listed by Alertmanager")
    manager.stop()
    assert not manager.manager.ready()


@pytest.mark.integration
def test_cli_up_status_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKSIDE_CACHE", str(tmp_path / "cache"))
    notifications = tmp_path / "notifications.yaml"
    notifications.write_text(FULL)
    app, runner, port = build_app("alertmanager"), CliRunner(), free_port()
    started = runner.invoke(
        app, ["alertmanager", "up", "-c", str(notifications), "--port", str(port)]
    )
    try:
        assert started.exit_code == 0, started.output
        assert f"http://127.0.0.1:{port}" in started.output
        status = runner.invoke(app, ["alertmanager", "status"])
        assert status.exit_code == 0 and "is ready" in status.output, status.output
        notifications.unlink()  # status and down do not need the file any more
    finally:
        stopped = runner.invoke(app, ["alertmanager", "down"])
    assert stopped.exit_code == 0 and "stopped" in stopped.output, stopped.output
    assert runner.invoke(app, ["alertmanager", "status"]).exit_code == 1
