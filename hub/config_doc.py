"""Render docs/configuration.md from the config models: ``python -m hub.config_doc``.

Every key of ``feedback-hub.yaml``, every connector and sink type, with type, default and
meaning, straight from the pydantic models; a test keeps the checked-in page current.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from connectors.registry import CONNECTOR_TYPES, connector_class
from hub import config as cfgmod
from hub.config_types import ComponentConfig
from normalizer.schema_doc import _type_name, write_doc
from outbox.sinks.registry import SINK_TYPES, sink_class

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

INTRO = """# Configuration reference

One YAML file, `feedback-hub.yaml` (or `--config PATH`, or `$FEEDBACK_HUB_CONFIG`). Relative
paths are taken from the folder the file is in. Unknown keys are errors. This page is generated
from the configuration models by `python -m hub.config_doc`, so it matches the code.

- **Secrets** come from the environment: write `${IMAP_PASSWORD}` (or `${VAR:-default}`) in any
  value. A variable that is not set is an error naming the key. Values that came from the
  environment are never printed, not in errors, logs or `status`.
- **Durations** are written `250ms`, `30s`, `5m`, `2h`, `1d` or a number of seconds; **sizes**
  `25MB`, `512KiB` or a number of bytes.
- `feedback-hub config check` prints every problem, one line each, with its key path and what
  was expected, e.g. `delivery.backoff_initial: expected a duration like "30s", got "often"`,
  and exits with code 2.

A minimal file:

```yaml
store: sqlite:///data/feedback-hub.db      # or postgresql://hub@db.internal/hub
blobs: data/blobs
timezone: Asia/Shanghai
connectors:
  - name: city-app
    type: jsonfile
    path: /srv/exports/city-app
sinks:
  - name: case-file
    type: jsonl
    path: /srv/out/cases.jsonl
```

See `samples/feedback-hub.yaml` for the demo's full file.
"""


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        d = field.default
        if isinstance(d, BaseModel):
            return "(section)"
        if hasattr(d, "value"):
            d = d.value
        return "" if d is None else f"`{d}`"
    if field.default_factory is not None:
        try:
            v = field.default_factory()
        except TypeError:
            return ""
        return "(section)" if isinstance(v, BaseModel) else f"`{v!r}`" if v else "empty"
    return "**required**"


def _table(model: type[BaseModel], prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in skip or field.exclude:
            continue
        desc = field.description
        if not desc and issubclass(model, ComponentConfig) and name in ComponentConfig.model_fields:
            desc = ComponentConfig.model_fields[name].description
        out.append(f"| `{prefix}{name}` | {_type_name(field.annotation)} | {_default(field)} | "
                   f"{(desc or '').replace('|', '/')} |")
        sub = _section_model(field.annotation)
        if sub is not None:  # a nested section: its keys follow, with the full path
            section, keyed = sub
            out += _table(section, f"{prefix}{name}.{'<key>.' if keyed else ''}")[2:-1]
    return [*out, ""]


def _section_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The model of a nested section (``Model``, ``Model | None`` or ``dict[str, Model]``) and
    whether it sits under a key of a mapping; None for plain values."""
    keyed = typing.get_origin(annotation) is dict
    args = typing.get_args(annotation)
    for c in (annotation, *(args[1:] if keyed else args)):
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c, keyed
    return None


def render() -> str:
    """Render the page."""
    out = [INTRO, "## Top level", ""]
    out += _table(cfgmod.HubConfig, skip=("connectors", "sinks", "routing"))
    out += ["`connectors` and `sinks` are lists of entries whose keys depend on their `type` "
            "(below); `routing` is a list of rules.", ""]
    for title, model, prefix in [
        ("routing[] (which sinks get a case)", cfgmod.RoutingRule, "routing[]."),
        ("delivery (retries of the outbox)", cfgmod.DeliveryPolicy, "delivery."),
        ("process", cfgmod.ProcessPolicy, "process."),
        ("server (`feedback-hub serve`)", cfgmod.ServerConfig, "server."),
        ("logging", cfgmod.LoggingConfig, "logging."),
    ]:
        out += [f"## {title}", ""]
        if model is cfgmod.RoutingRule:
            out += ["Rules are evaluated in order; a case goes to the union of the sinks of every "
                    "rule it matches (a rule with `stop: true` ends the evaluation). Without "
                    "rules every enabled sink gets every case. Conditions are lists; an empty list "
                    "matches anything; category codes match by prefix.", ""]
        out += _table(model, prefix)
    try:
        from normalizer.enrichment_config import EnrichmentConfig

        out += ["## enrichment", "", "See docs/enrichment.md for the taxonomy and tuning.", ""]
        out += _table(EnrichmentConfig, "enrichment.")
    except ImportError:
        pass
    for kind, types, lookup in (("connectors", CONNECTOR_TYPES, connector_class),
                                ("sinks", SINK_TYPES, sink_class)):
        for type_name in sorted(types):
            try:
                model = lookup(type_name).Config
            except (ImportError, AttributeError):
                continue
            doc = (lookup(type_name).__doc__ or "").strip().splitlines()[0]
            out += [f"## {kind}[] type `{type_name}`", "", doc, ""]
            out += _table(model, f"{kind}[].")
    return "\n".join(out)


def main() -> None:
    """Write docs/configuration.md (or print it with ``-``)."""
    write_doc(DOC, render(), sys.argv[1:])


if __name__ == "__main__":
    main()
