"""Config validation: every error names its key path; secrets never appear in output."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.config import ConfigError, load_config, validate_config
from tests.conftest import write_config


def errors_of(data: dict, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(data, env=env or {})
    return info.value.errors


def test_valid_config_loads_with_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path), env={})
    assert cfg.connectors[0].name == "city-app"
    assert cfg.store_url() == f"sqlite:///{(tmp_path / 'hub.db').resolve()}"
    assert cfg.delivery.backoff_initial == 1.0


def test_errors_name_the_key_path_and_what_was_expected() -> None:
    errs = errors_of({
        "connectors": [
            {"name": "a", "type": "jsonfile", "path": "in"},
            {"name": "b", "type": "jsonfile", "path": "in", "max_file_size": "huge"},
            {"name": "c", "type": "jsonfile", "pth": "typo"},
            {"name": "d", "type": "carrier-pigeon"},
        ],
        "delivery": {"backoff_initial": "often", "max_attempts": "x"},
        "timezone": "Mars/Olympus",
    })
    assert 'connectors[1].max_file_size: expected a size like "25MB", got "huge"' in errs
    assert any(e.startswith("connectors[2].pth: unknown key") for e in errs)
    assert "connectors[2].path: required key is missing" in errs
    assert any(e.startswith("connectors[3].type: unknown connector type 'carrier-pigeon'")
               for e in errs)
    assert 'delivery.backoff_initial: expected a duration like "30s", got "often"' in errs
    assert any(e.startswith("delivery.max_attempts:") for e in errs)
    assert any(e.startswith("timezone: expected an IANA time zone") for e in errs)


def test_routing_must_name_defined_sinks() -> None:
    errs = errors_of({"sinks": [{"name": "file", "type": "jsonl", "path": "x.jsonl"}],
                      "routing": [{"sinks": ["open311-city"]}]})
    assert errs == ["routing[0].sinks[0]: no sink named 'open311-city' (defined: file)"]


def test_duplicate_names_are_refused() -> None:
    errs = errors_of({"sinks": [{"name": "f", "type": "jsonl", "path": "a"},
                                {"name": "f", "type": "jsonl", "path": "b"}]})
    assert errs == ["sinks[1].name: duplicate name 'f'"]


def test_env_interpolation_and_missing_variables() -> None:
    cfg = validate_config({"server": {"port": "${HUB_PORT}", "api_keys": ["${KEY}"]}},
                          env={"HUB_PORT": "9000", "KEY": "k-123456"})
    assert cfg.server.port == 9000
    assert cfg.server.api_keys[0].get_secret_value() == "k-123456"
    errs = errors_of({"server": {"api_keys": ["${NOT_SET}"]}})
    assert errs == ["server.api_keys[0]: environment variable NOT_SET is not set"]
    cfg = validate_config({"blobs": "${BLOB_DIR:-/var/lib/hub/blobs}"}, env={})
    assert cfg.blobs == "/var/lib/hub/blobs"


def test_values_from_the_environment_are_never_echoed_in_errors() -> None:
    secret = "s3cr3t-Hunter2-value"
    errs = errors_of({"server": {"port": "${HUB_PORT}"}}, env={"HUB_PORT": secret})
    assert len(errs) == 1 and errs[0].startswith("server.port:")
    assert "value from the environment, not shown" in errs[0]
    assert secret not in "\n".join(errs)


def test_config_check_cli_exit_codes_and_no_secret_in_output(tmp_path: Path, cli) -> None:
    cfg = write_config(tmp_path, server={"api_keys": ["${OPEN311_KEY}"], "port": "${PORT}"})
    secret = "key-that-must-not-leak-42"
    ok = cli(cfg, "config", "check", env={"OPEN311_KEY": secret, "PORT": "8400"})
    assert ok.returncode == 0, ok.stderr
    assert secret not in ok.stdout + ok.stderr
    bad = cli(cfg, "config", "check", env={"OPEN311_KEY": secret, "PORT": secret})
    assert bad.returncode == 2
    assert "server.port:" in bad.stderr and secret not in bad.stdout + bad.stderr
    missing = cli(tmp_path / "nope.yaml", "status")
    assert missing.returncode == 2 and "config file not found" in missing.stderr


def test_configuration_reference_is_current() -> None:
    from hub.config_doc import DOC, render

    assert DOC.read_text(encoding="utf-8") == render(), \
        "docs/configuration.md is stale: run `python -m hub.config_doc`"
