"""Logging to stderr with structured fields, PII masked and secrets redacted on every record."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from normalizer.privacy import mask_text

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                       "taskName"}
_secrets: set[str] = set()


def register_secrets(values: Iterable[str]) -> None:
    """Remember secret values (from config) so they are redacted from any log line."""
    for v in values:
        if v and len(v) >= 4:
            _secrets.add(v)


def redact(text: str) -> str:
    """Mask PII and redact registered secrets in a string."""
    for s in _secrets:
        if s in text:
            text = text.replace(s, "***")
    return mask_text(text)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class PrivacyFilter(logging.Filter):
    """Masks phone/ID/card numbers and e-mail addresses, and redacts secrets, in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the message, its args and every structured field."""
        try:
            msg = record.getMessage()
        except Exception:
            msg = str(record.msg)
        record.msg = redact(msg)
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STD:
                setattr(record, key, _clean(value))
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STD}


class TextFormatter(logging.Formatter):
    """``2026-11-25T01:02:03Z INFO hub.pipeline: fetched source=mailbox count=3``."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one line with key=value fields."""
        when = datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        extra = " ".join(f"{k}={_short(v)}" for k, v in _fields(record).items())
        line = f"{when} {record.levelname} {record.name}: {record.getMessage()}"
        if extra:
            line += " " + extra
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one JSON line."""
        doc = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
               "level": record.levelname, "logger": record.name, "msg": record.getMessage(),
               **_fields(record)}
        if record.exc_text:
            doc["exc"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False, default=str)


def _short(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    return json.dumps(s, ensure_ascii=False) if (" " in s or not s) else s


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send logs to stderr with privacy filtering; safe to call more than once."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_feedback_hub", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._feedback_hub = True  # type: ignore[attr-defined]
    handler.addFilter(PrivacyFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("jieba", "urllib3", "paho", "imapclient", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
