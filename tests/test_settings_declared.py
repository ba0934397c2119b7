"""A setting is declared once: every flag, environment twin, TOML key and check follows from it.

These tests walk the declarations in daemon/settings.py, so a setting added there is checked
here without touching this file.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_config import _cli as _taskd  # one way to run the CLI in these tests

from conftest import ROOT
from daemon import cli, config, exitcodes, settings_rules
from daemon.config import DECLARED, ConfigError, Settings, env_name, flag_name
from daemon.settings_spec import DERIVED, Flag, Names, secrets

VERBS = cli.verb_parsers(cli.build_parser())
CLAIMS = [(name, verb) for name, row in DECLARED.items() for verb in row.verbs]


def _parsed(name: str) -> Any:
    """The value a setting's example parses to."""
    return DECLARED[name].kind.parse(DECLARED[name].kind.example)


def _argv(verb: str, *flags: str) -> list[str]:
    """A command line of `verb` that argparse accepts (its positional arguments filled in)."""
    before = ["list"] if verb == "dead" else []
    after = ["body"] if verb in ("enqueue", "publish") else []
    return [verb, *before, *flags, *after]


def test_every_setting_has_help_a_kind_and_verbs_that_exist() -> None:
    for name, row in DECLARED.items():
        assert row.help.strip(), name
        assert row.kind.expected.strip(), name
        assert row.verbs and set(row.verbs) <= set(VERBS), (name, row.verbs)
        assert set(row.verb_help) <= set(row.verbs), name


@pytest.mark.parametrize(("name", "verb"), CLAIMS)
def test_every_setting_has_a_flag_on_each_verb_it_claims(name: str, verb: str) -> None:
    row = DECLARED[name]
    if isinstance(row.kind, Flag):
        given: list[str] = [flag_name(name)]
    else:
        given = [flag_name(name), row.kind.example.split(",")[0]]
    args = cli.build_parser().parse_args(_argv(verb, *given))
    raw = getattr(args, name)
    assert raw is not None, f"{flag_name(name)} on {verb} does not set {name}"
    assert config.from_flags({name: raw}) == {
        name: _parsed(name)[:1] if isinstance(row.kind, Names) else _parsed(name)
    }
    action = next(a for a in VERBS[verb]._actions if a.dest == name)
    assert action.help and action.help.startswith(row.help_for(verb))
    assert env_name(name) in action.help


@pytest.mark.parametrize("verb", sorted(v for v in VERBS if v != "watchdog"))
def test_a_verb_has_flags_only_for_the_settings_that_claim_it(verb: str) -> None:
    """(The watchdog, a supervisord event listener, has flags of its own and no settings.)"""
    dests = {a.dest for a in VERBS[verb]._actions} & set(DECLARED)
    assert dests == {n for n, row in DECLARED.items() if verb in row.verbs}


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_every_setting_is_read_from_its_environment_twin(name: str) -> None:
    assert env_name(name) in config.known_env_names()
    example = DECLARED[name].kind.example
    assert config.from_env({env_name(name): example}) == {name: _parsed(name)}


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_every_setting_is_read_from_its_toml_key(name: str, tmp_path: Path) -> None:
    value = _parsed(name)
    cfg = tmp_path / "taskd.toml"
    cfg.write_text(
        f"[taskd]\n{name} = {json.dumps(list(value) if isinstance(value, tuple) else value)}\n"
    )
    assert config.from_toml(str(cfg)) == {name: value}


def test_the_environment_names_are_the_settings_the_secrets_and_the_config_path() -> None:
    expected = {env_name(n) for n in [*DECLARED, *secrets(Settings)]} | {"TASKD_CONFIG"}
    assert set(config.known_env_names()) == expected


@pytest.mark.parametrize("name", sorted(secrets(Settings)))
def test_secrets_are_neither_flags_nor_toml_keys_nor_shown(name: str, tmp_path: Path) -> None:
    assert all(a.dest != name for verb in VERBS.values() for a in verb._actions)
    cfg = tmp_path / "taskd.toml"
    cfg.write_text(f'{name} = "s3cret"\n')
    with pytest.raises(ConfigError, match=f"unknown setting '{name}'"):
        config.from_toml(str(cfg))
    given: dict[str, Any] = {name: "s3cret"}
    assert "s3cret" not in repr(Settings(**given))


def test_a_settings_built_in_code_gets_its_derived_values_without_any_call() -> None:
    s = Settings(block_timeout=2.0)
    assert (s.socket_timeout, s.heartbeat_ttl, s.recovery_interval) == (7.0, 6.0, 4.0)
    assert Settings(block_timeout=2.0, socket_timeout=3.0).socket_timeout == 3.0
    assert s.with_derived() is s  # kept for old callers, nothing left to do
    s.validate()


def test_a_replaced_settings_derives_again_only_what_is_passed_as_derived() -> None:
    base = Settings(block_timeout=2.0)
    kept = dataclasses.replace(base, block_timeout=4.0)
    assert kept.socket_timeout == 7.0  # a copy keeps its values, as dataclasses.replace does
    again = dataclasses.replace(base, block_timeout=4.0, socket_timeout=DERIVED)
    assert again.socket_timeout == 9.0


def test_zero_from_a_user_still_means_the_derived_default() -> None:
    s = config.load({"socket_timeout": "0"}, env={"TASKD_HEARTBEAT_TTL": "0"})
    assert (s.socket_timeout, s.heartbeat_ttl) == (10.0, 15.0)


@pytest.mark.parametrize(
    ("rule", "changes", "message"),
    [
        (settings_rules.redis_url_parses, {"redis_url": "http://x"}, "unknown scheme 'http'"),
        (
            settings_rules.client_certificate_has_its_key,
            {"tls_cert_file": str(ROOT / "README.md")},
            "--tls-cert-file and --tls-key-file: expected both",
        ),
        (
            settings_rules.socket_outlasts_the_claim,
            {"socket_timeout": 5.0},
            "--socket-timeout=5: expected more than the block timeout (5 s)",
        ),
        (
            settings_rules.heartbeat_outlasts_the_claim,
            {"heartbeat_ttl": 4.0},
            "--heartbeat-ttl=4: expected more than the block timeout",
        ),
        (
            settings_rules.stall_outlasts_the_socket,
            {"stall_timeout": 10.0},
            "--stall-timeout=10: expected more than the socket timeout (10 s",
        ),
        (
            settings_rules.backoff_cap_is_at_least_its_base,
            {"backoff_base": 9.0},
            "--backoff-cap=5: expected at least --backoff-base (9)",
        ),
        (
            settings_rules.retry_cap_is_at_least_its_base,
            {"retry_base": 900.0},
            "--retry-cap=300: expected at least --retry-base (900)",
        ),
        (
            settings_rules.queue_names_have_no_spaces,
            {"queues": ("a b",)},
            "--queue='a b': expected a queue name without spaces",
        ),
        (
            settings_rules.no_queue_is_another_queues_key,
            {"queues": ("q", "q:dead")},
            "--queue='q:dead': that is a key of queue 'q'",
        ),
    ],
)
def test_each_cross_field_rule_names_what_breaks_it(
    rule: settings_rules.Rule, changes: dict[str, Any], message: str
) -> None:
    assert rule in settings_rules.RULES
    assert rule(Settings()) is None
    broken = Settings(**changes)
    found = rule(broken)
    assert found is not None and message in found
    with pytest.raises(ConfigError, match="^" + re.escape(found) + "$"):
        broken.validate()


def test_defaults_pass_every_check() -> None:
    Settings().validate()
    assert all(rule.__doc__ for rule in settings_rules.RULES)


def test_exit_codes_are_distinct_and_the_cli_uses_no_literal_ones() -> None:
    codes = {k: v for k, v in vars(exitcodes).items() if k.isupper() and isinstance(v, int)}
    assert len(set(codes.values())) == len(codes), codes
    for module in ("cli.py", "commands.py", "config.py"):
        tree = ast.parse((ROOT / "daemon" / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant):
                assert not isinstance(node.value.value, int), f"{module}:{node.lineno}"


def test_nothing_in_the_product_package_imports_the_soak() -> None:
    for path in sorted((ROOT / "daemon").glob("*.py")):
        if path.name.startswith("soak"):
            continue  # the soak itself, on its way to tools/
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)]
            assert not any(n.startswith("daemon.soak") for n in names), path.name


def test_soak_is_no_longer_a_verb() -> None:
    result = _taskd("soak")
    assert result.returncode == exitcodes.CONFIG
    assert "invalid choice: 'soak'" in result.stderr


def test_help_of_every_verb_lists_every_flag_it_claims() -> None:
    top = _taskd("--help")
    assert top.returncode == 0 and all(verb in top.stdout for verb in VERBS)
    for verb in ("consume", "web"):
        shown = _taskd(verb, "--help")
        assert shown.returncode == 0
        for name, row in DECLARED.items():
            if verb in row.verbs:
                assert flag_name(name) in shown.stdout, (verb, name)
