"""Rule and service files: the defaults load; every mistake names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.alerts.config import DEFAULT_RULES, load_service_config
from gateway.alerts.rules import PairRule, RuleError, StaleRule, ThresholdRule, load_rules
from gateway.cli import app
from gateway.topics import Topics


def test_the_default_rules_load_and_carry_the_hot_box_levels() -> None:
    rules = {rule.name: rule for rule in load_rules(DEFAULT_RULES).rules}
    hot = rules["bearing_hot"]
    assert isinstance(hot, ThresholdRule)
    assert (hot.above, hot.relative_to) == (94, "ambient_temp")
    pair = rules["bearing_difference"]
    assert isinstance(pair, PairRule)
    assert pair.above == 53
    assert isinstance(rules["device_stale"], StaleRule)
    assert {rule.kind for rule in rules.values()} == {"threshold", "rate", "pair", "stale"}


def test_durations_accept_units() -> None:
    rule = {"name": "x", "kind": "threshold", "channels": ["speed"], "above": 1}
    for text, seconds in (("10", 10), ("10s", 10), ("2m", 120), ("1h", 3600), ("500ms", 0.5)):
        loaded = ThresholdRule.model_validate({**rule, "for": text})
        assert loaded.for_s == seconds


BAD = [
    ("rules: [{name: hot, kind: threshold, channels: [speed]}]", "rules[0] (hot): "),
    ("rules: [{name: hot, kind: threshold, channels: [speed]}]", "exactly one of `above`"),
    (
        "rules: [{name: hot, kind: threshold, channels: [bearing_lft_temp], above: 1}]",
        "rules[0] (hot).channels[0]: Value error, unknown channel 'bearing_lft_temp'",
    ),
    (
        "rules: [{name: a, kind: stale, after_s: 1}, {name: hot, kind: treshold}]",
        "rules[1] (hot): Input tag 'treshold'",
    ),
    (
        "rules: [{name: hot, kind: threshold, channels: [speed], above: 1, for: soon}]",
        "rules[0] (hot).for: Value error, 'soon' is not a duration",
    ),
    (
        "rules: [{name: hot, kind: threshold, channels: [speed], above: 10, clear: 12}]",
        "`clear` (12.0) must be at most `above` (10.0)",
    ),
    (
        "rules: [{name: low, kind: threshold, channels: [speed], below: 10, clear: 8}]",
        "`clear` (8.0) must be at least `below` (10.0)",
    ),
    (
        "rules: [{name: p, kind: pair, pairs: [[engine_temp]], above: 1}]",
        "rules[0] (p).pairs[0][1]: Field required",
    ),
    (
        "rules: [{name: a, kind: stale, after_s: 1}, {name: a, kind: stale, after_s: 2}]",
        "rule names must be unique; repeated: a",
    ),
    (
        "rules: [{name: _seen, kind: stale, after_s: 1}]",
        "rules[0] (_seen).name: String should match pattern",
    ),
    (
        "rules: [{name: a, kind: stale, after_s: 1, severity: urgent}]",
        "rules[0] (a).severity: Input should be 'info', 'warning' or 'critical'",
    ),
    ("rules: [{name: a, kind: stale, after_s: 1, colour: red}]", "rules[0] (a).colour"),
    ("rules: []", "rules: Tuple should have at least 1 item"),
    ("policy: {disable_train: maybe}\nrules: []", "policy.disable_train: Input should be"),
    ("- just\n- a list", "the top level must be a mapping"),
    ("rules: [", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_rule_file_names_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_one_bad_channel_is_one_error_not_its_empty_tuples_too(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules: [{name: hot, kind: threshold, channels: [bearing_lft], above: 1}]")
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert "unknown channel 'bearing_lft'" in str(caught.value)
    assert "Tuple should have at least 1 item" not in str(caught.value)


def test_a_missing_rule_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="cannot read the rule file"):
        load_rules(tmp_path / "nope.yaml")


def test_the_service_file_resolves_the_rule_file_next_to_it(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text(
        "kafka: {bootstrap_servers: 'k:9092', settings: {linger.ms: 1}}\n"
        "topics: {alerts: my.alerts}\nrules_file: rules.yaml\n"
    )
    config = load_service_config(path)
    assert config.rules_file == tmp_path / "rules.yaml"
    assert config.topics.alerts == "my.alerts"
    assert config.topics.telemetry == "trackside.telemetry"
    assert Topics.with_prefix("t1").maintenance == "t1.maintenance"
    path.write_text("kafka: {partitions: 0}\n")
    with pytest.raises(RuleError, match=r"alerts.yaml: kafka.partitions: Input should be"):
        load_service_config(path)


def test_cli_check_lists_the_rules_and_fails_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["alerts", "check", str(DEFAULT_RULES)])
    assert result.exit_code == 0, result.output
    assert "bearing_difference" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [{name: hot, kind: threshold, channels: [speed], above: x}]")
    result = runner.invoke(app, ["alerts", "check", str(bad)])
    assert isinstance(result.exception, RuleError)
    assert "rules[0] (hot).above" in str(result.exception)
