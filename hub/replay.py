"""Replaying dead letters: put the failed item back on the path it fell off.

* ``deliver``: the outbox row is queued again with the SAME idempotency key.
* ``process``: the raw record goes back to pending (optionally with a corrected payload).
* ``ingest``: the stored raw bytes (or corrected bytes) are parsed again by the connector.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from connectors.base import ReparseError
from hub.pipeline import Hub
from outbox.store.timefmt import now_utc

logger = logging.getLogger(__name__)


class ReplayError(Exception):
    """A dead letter cannot be replayed (the reason says why)."""


@dataclass
class ReplayOutcome:
    """What a replay did."""

    dead_letter_id: int
    stage: str
    result: str


def replay(hub: Hub, dl_id: int, corrected: bytes | None = None) -> ReplayOutcome:
    """Replay one dead letter.

    Args:
        hub: the runtime.
        dl_id: the dead letter id.
        corrected: replacement raw bytes (ingest) or record JSON (process), if the operator
            fixed the input.

    Raises:
        ReplayError: unknown id, already replayed, or the input still does not parse.
    """
    dl = hub.store.dead_letter(dl_id)
    if dl is None:
        raise ReplayError(f"no dead letter {dl_id}")
    if dl["replay_state"] != "new":
        raise ReplayError(f"dead letter {dl_id} was already {dl['replay_state']}")
    stage = dl["stage"]
    if stage == "deliver":
        if corrected is not None:
            raise ReplayError("a delivery is replayed as it was; fix the sink or config instead")
        hub.store.requeue_outbox(int(dl["outbox_id"]))
        result = f"delivery {dl['outbox_id']} queued again (same idempotency key)"
    elif stage == "process":
        raw = hub.store.get_raw(int(dl["raw_record_id"]))
        if raw is None:
            raise ReplayError(f"raw record {dl['raw_record_id']} is missing")
        payload = None
        if corrected is not None:
            try:
                fixed = json.loads(corrected.decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ReplayError(f"corrected payload is not valid JSON: {exc}") from exc
            if not isinstance(fixed, dict):
                raise ReplayError("corrected payload must be a JSON object")
            payload = dict(raw.record.payload)
            if "record" in payload:
                payload["record"] = fixed
                payload["corrected_from_dead_letter"] = dl_id
            else:
                payload = fixed
        hub.store.requeue_raw(raw.id, payload, note=f"replay of dead letter {dl_id}")
        result = f"raw record {raw.id} queued for processing" + (
            " with a corrected payload" if payload is not None else "")
    elif stage == "ingest":
        source = dl["source"]
        try:
            conn = hub.connector(source)
        except KeyError as exc:
            raise ReplayError(f"connector {source!r} is no longer configured") from exc
        reparse = getattr(conn, "reparse", None)
        if reparse is None:
            raise ReplayError(f"connector type of {source!r} cannot re-parse raw bytes")
        if corrected is None:
            if not dl["blob_sha256"]:
                raise ReplayError("no raw bytes were kept for this dead letter")
            corrected = hub.blobs.read(dl["blob_sha256"])
        try:
            records = reparse(corrected, dl["source_ref"], now_utc())
        except ReparseError as exc:
            hub.store.mark_dead_letter(dl_id, "new", f"replay failed: {exc}")
            raise ReplayError(f"still cannot parse: {exc}") from exc
        res = hub.store.commit_ingest(source, records)
        result = f"{res.inserted} record(s) ingested, {res.duplicates} already present"
    else:
        raise ReplayError(f"unknown stage {stage!r}")
    hub.store.mark_dead_letter(dl_id, "replayed", result)
    logger.info("dead letter replayed", extra={"dead_letter": dl_id, "stage": stage,
                                               "result": result})
    return ReplayOutcome(dl_id, stage, result)
