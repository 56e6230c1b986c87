"""Load and validate ``feedback-hub.yaml``.

* ``${VAR}`` (and ``${VAR:-default}``) are replaced from the environment before validation.
* Every connector and sink entry is validated by the model its ``type`` names; unknown keys
  are errors everywhere.
* Errors name the key path and what was expected, e.g.
  ``connectors[1].poll_interval: expected a duration like "30s", got "often"``, and never show a
  value that came from the environment (it may be a secret).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator

from hub.config_types import ComponentConfig, Duration, StrictModel

DEFAULT_CONFIG_NAME = "feedback-hub.yaml"
ENV_CONFIG = "FEEDBACK_HUB_CONFIG"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str], path: str | None = None) -> None:
        self.errors = errors
        self.path = path
        super().__init__("\n".join(errors))


class DeliveryPolicy(StrictModel):
    """Retry policy of the delivery loop."""

    max_attempts: int = Field(default=10, ge=1, description="Dead-letter after this many tries.")
    max_age: Duration = Field(default=3 * 86400, description="Dead-letter a delivery still "
                              "failing this long after it was queued (seconds or 3d).")
    backoff_initial: Duration = Field(default=5.0, description="Wait before the 2nd attempt.")
    backoff_max: Duration = Field(default=3600.0, description="Longest wait between attempts.")
    backoff_multiplier: float = Field(default=2.0, ge=1.0,
                                      description="Each wait is this many times the last.")
    jitter: float = Field(default=0.2, ge=0, le=1,
                          description="Random spread of each wait (0.2 = ±20%).")
    lease: Duration = Field(default=300.0, description="How long a claimed row stays claimed.")
    batch_size: int = Field(default=100, ge=1, description="Rows claimed at a time.")


class RoutingRule(StrictModel):
    """Send matching cases to ``sinks``. Empty conditions match everything."""

    sinks: list[str] = Field(min_length=1, description="Sink names to send matching cases to.")
    categories: list[str] = Field(default_factory=list, description="Category codes (prefixes).")
    departments: list[str] = Field(default_factory=list,
                                   description="Lead or co-operating department names.")
    channels: list[str] = Field(default_factory=list,
                                description="email, hotline, iot, scan, forward.")
    urgencies: list[str] = Field(default_factory=list,
                                 description="normal, urgent, emergency.")
    kinds: list[str] = Field(default_factory=list,
                             description="complaint, report, help, inquiry, suggestion, praise, "
                                         "device_fault.")
    sources: list[str] = Field(default_factory=list, description="Connector names.")
    stop: bool = Field(default=False, description="Do not evaluate later rules when this matches.")


class ServerConfig(StrictModel):
    """``feedback-hub serve``: forward intake, Open311 facade, metrics, health."""

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8311, ge=1, le=65535, description="Port to listen on.")
    source: str = Field(default="upstream-api", description="Source name of records posted here.")
    api_keys: list[SecretStr] = Field(default_factory=list, description="Open311 api_key values.")
    hmac_secrets: dict[str, SecretStr] = Field(
        default_factory=dict, description="Key id → shared secret for POST /v1/records."
    )
    max_body: int = Field(default=1_048_576, ge=1024, description="Largest request body (bytes).")
    replay_window: Duration = Field(default=300.0, description="Accepted clock skew / age of a "
                                    "signed request's timestamp.")
    progress_secret: SecretStr | None = Field(
        default=None, description="When set, GET /v1/cases/{reference} also needs ?code= with "
        "the case's access code (derived from this secret; in the intake answer and `cases "
        "show`), so sequential references cannot be walked. Unset: reference alone.")


class ProcessPolicy(StrictModel):
    """How the process stage batches its work."""

    batch_size: int = Field(default=500, ge=1, description="Raw records per transaction.")
    lease_wait: Duration = Field(default=30.0, description="One worker processes at a time: "
                                 "how long run --once, replays and the intake server wait "
                                 "for another worker's pass to end (listen does not wait).")


class LoggingConfig(StrictModel):
    """Logging output."""

    level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$",
                       description="DEBUG, INFO, WARNING or ERROR.")
    format: str = Field(default="text", pattern=r"^(text|json)$",
                        description="text (key=value) or json (one object per line).")


class HubConfig(StrictModel):
    """The whole ``feedback-hub.yaml``."""

    store: str = Field(
        default="sqlite:///data/feedback-hub.db",
        description="sqlite:///path/to/file.db or postgresql://user@host/db",
    )
    blobs: str = Field(default="data/blobs", description="Blob folder (raw mail, attachments, "
                       "bad input), named by sha256.")
    timezone: str = Field(default="Asia/Shanghai", description="Local zone: references, "
                          "working-day deadlines, naive upstream times.")
    connectors: list[ComponentConfig] = Field(default_factory=list)
    sinks: list[ComponentConfig] = Field(default_factory=list)
    routing: list[RoutingRule] = Field(default_factory=list)
    delivery: DeliveryPolicy = Field(default_factory=DeliveryPolicy,
                                     description="Retry policy (below).")
    process: ProcessPolicy = Field(default_factory=ProcessPolicy, description="Batching (below).")
    enrichment: dict[str, Any] = Field(
        default_factory=dict, description="See docs/enrichment.md (validated by normalizer)."
    )
    server: ServerConfig = Field(default_factory=ServerConfig,
                                 description="HTTP server (below).")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logs (below).")

    #: Folder the config file is in; relative paths in the config are taken from here.
    base_dir: str = Field(default=".", exclude=True)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(v)
        except Exception as exc:
            raise ValueError(f'expected an IANA time zone like "Asia/Shanghai", got "{v}"') from exc
        return v

    def resolve_path(self, p: str) -> Path:
        """Resolve a config-relative path."""
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() else Path(self.base_dir) / path

    def store_url(self) -> str:
        """The store URL with a relative SQLite path made absolute."""
        if self.store.startswith("sqlite:///") and not self.store.startswith("sqlite:////"):
            return "sqlite:///" + str(self.resolve_path(self.store[len("sqlite:///"):]).resolve())
        return self.store

    def connector(self, name: str) -> ComponentConfig:
        """Find a connector entry by name."""
        for c in self.connectors:
            if c.name == name:
                return c
        raise KeyError(name)

    def sink(self, name: str) -> ComponentConfig:
        """Find a sink entry by name."""
        for s in self.sinks:
            if s.name == name:
                return s
        raise KeyError(name)


@dataclass
class _Interpolated:
    """Paths whose values came from the environment (never echoed)."""

    paths: set[tuple[Any, ...]]


def _interpolate(node: Any, path: tuple[Any, ...], env: dict[str, str], seen: _Interpolated,
                 errors: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, (*path, k), env, seen, errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, (*path, i), env, seen, errors) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append(f"{format_loc(path)}: environment variable {name} is not set")
            return ""

        seen.paths.add(path)
        whole = _VAR.fullmatch(node)
        value = _VAR.sub(repl, node)
        if whole and value.strip() and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        return value
    return node


def format_loc(loc: tuple[Any, ...]) -> str:
    """Format a key path like ``connectors[1].poll_interval``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


def _error_lines(exc: ValidationError, prefix: tuple[Any, ...], secret_paths: set[tuple[Any, ...]]
                 ) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = (*prefix, *[p for p in err["loc"]
                          if not (isinstance(p, str) and p.startswith("function-"))])
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/configuration.md)"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind not in ("value_error",) and "input" in err and not _is_secret(loc, secret_paths):
            shown = err["input"]
            if isinstance(shown, (str, int, float, bool)) or shown is None:
                msg = f"{msg}, got {shown!r}"
        if _is_secret(loc, secret_paths):
            # the value came from the environment: say where, never what
            msg = _strip_value(msg) + " (value from the environment, not shown)"
        lines.append(f"{format_loc(loc)}: {msg}")
    return lines


def _is_secret(loc: tuple[Any, ...], secret_paths: set[tuple[Any, ...]]) -> bool:
    return any(loc[: len(p)] == p for p in secret_paths)


def _strip_value(msg: str) -> str:
    return re.sub(r',? got .*$', "", msg)


def load_config(path: str | os.PathLike[str] | None = None,
                env: dict[str, str] | None = None) -> HubConfig:
    """Read, interpolate and validate a config file.

    Args:
        path: the YAML file; defaults to ``$FEEDBACK_HUB_CONFIG`` or ``./feedback-hub.yaml``.
        env: the environment to interpolate from (defaults to ``os.environ``).

    Raises:
        ConfigError: with one message per problem, each naming its key path.
    """
    env = dict(os.environ if env is None else env)
    cfg_path = Path(path or env.get(ENV_CONFIG) or DEFAULT_CONFIG_NAME)
    if not cfg_path.is_file():
        raise ConfigError([f"config file not found: {cfg_path}"], str(cfg_path))
    try:
        data = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(cfg_path)) from exc
    if not isinstance(data, dict):
        raise ConfigError(["(root): expected a mapping of keys"], str(cfg_path))
    return validate_config(data, base_dir=str(cfg_path.resolve().parent), env=env,
                           path=str(cfg_path))


def validate_config(data: dict[str, Any], *, base_dir: str = ".", env: dict[str, str] | None = None,
                    path: str | None = None) -> HubConfig:
    """Validate an already-parsed config mapping (see :func:`load_config`)."""
    from connectors.registry import connector_config_model
    from outbox.sinks.registry import sink_config_model

    env = dict(os.environ if env is None else env)
    errors: list[str] = []
    seen = _Interpolated(set())
    data = _interpolate(data, (), env, seen, errors)

    typed: dict[str, list[ComponentConfig]] = {"connectors": [], "sinks": []}
    for section, lookup in (("connectors", connector_config_model), ("sinks", sink_config_model)):
        items = data.get(section) or []
        if not isinstance(items, list):
            errors.append(f"{section}: expected a list of entries")
            continue
        names: set[str] = set()
        for i, item in enumerate(items):
            loc = (section, i)
            if not isinstance(item, dict):
                errors.append(f"{format_loc(loc)}: expected a mapping with name and type")
                continue
            kind = item.get("type")
            try:
                model = lookup(kind)
            except KeyError as exc:
                errors.append(f"{format_loc((*loc, 'type'))}: {exc.args[0]}")
                continue
            try:
                entry = model.model_validate(item)
            except ValidationError as exc:
                errors.extend(_error_lines(exc, loc, seen.paths))
                continue
            if entry.name in names:
                errors.append(f"{format_loc((*loc, 'name'))}: duplicate name {entry.name!r}")
            names.add(entry.name)
            typed[section].append(entry)

    rest = {k: v for k, v in data.items() if k not in ("connectors", "sinks")}
    cfg: HubConfig | None = None
    try:
        cfg = HubConfig.model_validate({**rest, "base_dir": base_dir})
    except ValidationError as exc:
        errors.extend(_error_lines(exc, (), seen.paths))

    if cfg is not None:
        sink_names = {s.name for s in typed["sinks"]}
        for i, rule in enumerate(cfg.routing):
            for j, s in enumerate(rule.sinks):
                if s not in sink_names:
                    errors.append(f"routing[{i}].sinks[{j}]: no sink named {s!r} "
                                  f"(defined: {', '.join(sorted(sink_names)) or 'none'})")
        try:
            from normalizer.enrichment_config import validate_enrichment

            validate_enrichment(cfg.enrichment, base_dir=base_dir)
        except ValidationError as exc:
            errors.extend(_error_lines(exc, ("enrichment",), seen.paths))
        except ValueError as exc:
            errors.append(f"enrichment: {exc}")

    if errors:
        raise ConfigError(errors, path)
    assert cfg is not None
    cfg.connectors = typed["connectors"]
    cfg.sinks = typed["sinks"]
    return cfg
