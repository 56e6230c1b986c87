"""``jsonfile``: a drop folder of JSON / NDJSON records exported by an upstream platform.

Each file is one batch. After its records are committed the file moves to ``done/``; a file
that cannot be read at all moves to ``quarantine/`` with a ``.reason.txt`` beside it (and its
bytes go to the dead letters). A bad record inside a good file is dead-lettered alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from connectors.base import IngestContext, RawRecord, Reject, ReparseError, SourceBatch
from hub.config_types import ByteSize, ComponentConfig
from normalizer.case import Channel

logger = logging.getLogger(__name__)

SUFFIXES = (".json", ".ndjson", ".jsonl")


class JsonFileConfig(ComponentConfig):
    """Config of a ``jsonfile`` connector."""

    type: Literal["jsonfile"] = "jsonfile"
    path: str = Field(description="Inbox folder the upstream platform drops files into.")
    done_dir: str | None = Field(default=None, description="Default: <path>/done")
    quarantine_dir: str | None = Field(default=None, description="Default: <path>/quarantine")
    id_field: str = Field(default="id", description="Upstream record id (the source_ref).")
    channel: Channel = Field(default=Channel.forward, description="Channel of these records.")
    max_file_size: ByteSize = Field(default=50_000_000, description="Larger files: quarantine.")
    max_record_size: ByteSize = Field(default=1_000_000, description="Larger records: dead letter.")


class JsonFileConnector:
    """Reads ``*.json`` (an object or an array of objects) and ``*.ndjson``/``*.jsonl`` files."""

    type_name: ClassVar[str] = "jsonfile"
    Config = JsonFileConfig

    def __init__(self, config: JsonFileConfig, base_dir: str | Path = ".") -> None:
        self.config = config
        self.name = config.name
        self.channel = config.channel
        base = Path(base_dir)
        self.inbox = _resolve(base, config.path)
        self.done = _resolve(base, config.done_dir) if config.done_dir else self.inbox / "done"
        self.quarantine = (_resolve(base, config.quarantine_dir) if config.quarantine_dir
                           else self.inbox / "quarantine")

    @classmethod
    def from_config(cls, config: JsonFileConfig, runtime: Any) -> JsonFileConnector:
        """Build from config (``runtime.config.base_dir`` resolves relative paths)."""
        return cls(config, base_dir=runtime.config.base_dir)

    # ------------------------------------------------------------------ fetch
    def fetch(self, ctx: IngestContext) -> Iterator[SourceBatch]:
        """Yield one batch per file, oldest name first."""
        if not self.inbox.is_dir():
            raise FileNotFoundError(f"inbox folder not found: {self.inbox}")
        files = sorted(p for p in self.inbox.iterdir()
                       if p.is_file() and p.suffix.lower() in SUFFIXES)
        count = 0
        for path in files:
            batch = self._read_file(path, ctx)
            count += len(batch.records)
            yield batch
            if ctx.max_records is not None and count >= ctx.max_records:
                return

    def _read_file(self, path: Path, ctx: IngestContext) -> SourceBatch:
        size = path.stat().st_size
        checkpoint = {"last_file": path.name}
        if size > self.config.max_file_size:
            blob = ctx.blobs.put_file(path, filename=path.name)
            reason = f"file {path.name} is {size} bytes, over max_file_size " \
                     f"{self.config.max_file_size}"
            return SourceBatch(rejects=[Reject(reason, blob_sha256=blob.sha256,
                                               source_ref=f"file:{blob.sha256}",
                                               detail={"file": path.name})],
                               checkpoint=checkpoint, ack_token=("quarantine", path, reason))
        raw = path.read_bytes()
        try:
            text = _decode(raw)
        except UnicodeDecodeError as exc:
            reason = f"file {path.name} is not UTF-8 text: {exc.reason} at byte {exc.start}"
            return self._whole_file_reject(path, raw, reason, checkpoint)
        records: list[RawRecord] = []
        rejects: list[Reject] = []
        if path.suffix.lower() == ".json":
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as exc:
                reason = f"file {path.name} is not valid JSON: {exc.msg} " \
                         f"(line {exc.lineno} column {exc.colno})"
                return self._whole_file_reject(path, raw, reason, checkpoint)
            items = doc if isinstance(doc, list) else [doc]
            for i, item in enumerate(items, 1):
                item_raw = json.dumps(item, ensure_ascii=False).encode()
                self._one(item, item_raw, f"{path.name}#{i}", ctx.now, records, rejects)
        else:
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                where = f"{path.name} line {lineno}"
                line_raw = line.encode("utf-8")
                if len(line_raw) > self.config.max_record_size:
                    rejects.append(Reject(f"{where}: record is {len(line_raw)} bytes, over "
                                          f"max_record_size {self.config.max_record_size}",
                                          raw=line_raw, detail={"file": path.name,
                                                                "line": lineno}))
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    rejects.append(Reject(f"{where}: not valid JSON: {exc.msg} "
                                          f"(column {exc.colno})", raw=line_raw,
                                          detail={"file": path.name, "line": lineno}))
                    continue
                self._one(item, line_raw, where, ctx.now, records, rejects)
        return SourceBatch(records=records, rejects=rejects, checkpoint=checkpoint,
                           ack_token=("done", path, None))

    def _one(self, item: Any, raw: bytes, where: str, now: datetime,
             records: list[RawRecord], rejects: list[Reject]) -> None:
        try:
            records.append(self._record(item, now, where))
        except ReparseError as exc:
            rejects.append(Reject(f"{where}: {exc}", raw=raw, detail={"where": where}))

    def _record(self, item: Any, now: datetime, where: str | None = None) -> RawRecord:
        if not isinstance(item, dict):
            raise ReparseError(f"expected a JSON object, got {type(item).__name__}")
        upstream_id = item.get(self.config.id_field)
        if upstream_id is not None and not isinstance(upstream_id, (str, int)):
            raise ReparseError(f"{self.config.id_field} must be a string or integer")
        if upstream_id is not None and str(upstream_id).strip():
            ref = f"id:{str(upstream_id).strip()}"
        else:
            canon = json.dumps(item, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
            ref = "sha256:" + hashlib.sha256(canon.encode()).hexdigest()
        payload = {"record": item}
        if where:
            payload["origin"] = where
        return RawRecord(source=self.name, channel=self.channel, source_ref=ref,
                         received_at=now, payload=payload)

    def _whole_file_reject(self, path: Path, raw: bytes, reason: str,
                           checkpoint: dict[str, Any]) -> SourceBatch:
        return SourceBatch(rejects=[Reject(reason, raw=raw, detail={"file": path.name},
                                           source_ref=f"file:{hashlib.sha256(raw).hexdigest()}")],
                           checkpoint=checkpoint, ack_token=("quarantine", path, reason))

    # ------------------------------------------------------------------ ack
    def ack(self, batch: SourceBatch) -> None:
        """Move the file to done/ or quarantine/ (only after the batch is committed)."""
        action, path, reason = batch.ack_token
        target_dir = self.done if action == "done" else self.quarantine
        target_dir.mkdir(parents=True, exist_ok=True)
        target = _free_name(target_dir / path.name)
        shutil.move(str(path), target)
        if reason:
            Path(str(target) + ".reason.txt").write_text(reason + "\n", encoding="utf-8")
        logger.info("file acknowledged", extra={"source": self.name, "file": path.name,
                                                "moved_to": action})

    def reparse(self, raw: bytes, source_ref: str | None, now: datetime) -> list[RawRecord]:
        """Parse corrected bytes (one record, an array, or NDJSON) from a dead letter."""
        try:
            text = _decode(raw)
        except UnicodeDecodeError as exc:
            raise ReparseError(f"not UTF-8 text: {exc.reason}") from exc
        try:
            doc = json.loads(text)
            items = doc if isinstance(doc, list) else [doc]
        except json.JSONDecodeError:
            try:
                items = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as exc:
                raise ReparseError(f"not valid JSON: {exc.msg} (line {exc.lineno} "
                                   f"column {exc.colno})") from exc
        return [self._record(item, now, "replay") for item in items]

    def close(self) -> None:
        """Nothing to release."""


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8-sig")


def _resolve(base: Path, p: str) -> Path:
    path = Path(os.path.expanduser(p))
    return path if path.is_absolute() else base / path


def _free_name(target: Path) -> Path:
    if not target.exists():
        return target
    n = 1
    while True:
        candidate = target.with_name(f"{target.stem}.{n}{target.suffix}")
        if not candidate.exists():
            return candidate
        n += 1
