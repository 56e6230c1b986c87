"""``jsonl`` sink: one JSON line per delivery, appended and fsynced, for small offices and audits.

Exactly once: the file itself is the receipt log. Before appending, the sink takes an exclusive
``flock`` and reads any lines added since it last looked; a delivery whose idempotency key is
already in the file (a crash after the append but before the receipt commit) is acknowledged
without writing it again.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from hub.config_types import ComponentConfig
from outbox.sinks.base import Delivery, DeliveryError, Receipt


class JsonlSinkConfig(ComponentConfig):
    """Config of a ``jsonl`` sink."""

    type: Literal["jsonl"] = "jsonl"
    path: str = Field(description="File to append to (created with its folder).")
    fsync: bool = Field(default=True, description="fsync after every line.")


class JsonlSink:
    """Appends deliveries to a JSON Lines file."""

    type_name: ClassVar[str] = "jsonl"
    Config = JsonlSinkConfig

    def __init__(self, config: JsonlSinkConfig, base_dir: str | Path = ".") -> None:
        self.config = config
        self.name = config.name
        p = Path(os.path.expanduser(config.path))
        self.path = p if p.is_absolute() else Path(base_dir) / p
        self._keys: dict[str, int] = {}
        self._offset = 0
        self._lines = 0

    @classmethod
    def from_config(cls, config: JsonlSinkConfig, runtime: Any) -> JsonlSink:
        """Build from config."""
        return cls(config, base_dir=runtime.config.base_dir)

    def _catch_up(self, fh: Any) -> None:
        fh.seek(self._offset)
        for line in fh:
            if not line.endswith(b"\n"):
                break  # a torn last line from a crash mid-write: it never counted
            self._offset += len(line)
            self._lines += 1
            try:
                key = json.loads(line).get("idempotency_key")
            except ValueError:
                continue
            if key:
                self._keys[key] = self._lines

    def deliver(self, delivery: Delivery) -> Receipt:
        """Append one line unless its idempotency key is already in the file."""
        line = json.dumps({
            "idempotency_key": delivery.idempotency_key,
            "kind": delivery.kind,
            "delivered_at": datetime.now(timezone.utc).isoformat(),
            "case": delivery.case,
            "update": delivery.update,
        }, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                try:
                    self._catch_up(fh)
                    if delivery.idempotency_key in self._keys:
                        return Receipt(remote_id=f"line:{self._keys[delivery.idempotency_key]}",
                                       detail={"already_present": True})
                    fh.seek(0, os.SEEK_END)
                    end = fh.tell()
                    if end != self._offset:
                        # a torn tail from an earlier crash: start ours on a fresh line
                        fh.write(b"\n")
                    fh.write(line)
                    fh.flush()
                    if self.config.fsync:
                        os.fsync(fh.fileno())
                    self._catch_up(fh)
                finally:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except OSError as exc:
            # disk full, permissions, a missing mount: worth retrying after the operator fixes it
            raise DeliveryError(f"cannot write {self.path}: {exc.strerror or exc}",
                                retryable=True) from exc
        return Receipt(remote_id=f"line:{self._keys.get(delivery.idempotency_key)}")

    def close(self) -> None:
        """Nothing held open between deliveries."""
