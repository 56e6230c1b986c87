"""The channel-mapper and enricher contracts.

A mapper turns one stored :class:`~connectors.base.RawRecord` into a :class:`MapResult`: a new
case, updates to existing cases, or "ignored" with a reason. Mappers and enrichers do no network
I/O; what they need from earlier cases (reply threading, IoT episodes, repeat linking) they ask of
:class:`MapContext`, which reads and writes inside the same store transaction that will commit
the result, so reprocessing stays deterministic and idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from connectors.base import RawRecord
from normalizer.case import Case, CaseUpdate

if TYPE_CHECKING:
    from outbox.blobs import BlobStore


class MappingError(ValueError):
    """The record cannot become a case: it goes to the dead letters with this message."""


@dataclass
class MapResult:
    """What a raw record became."""

    case: Case | None = None
    updates: list[CaseUpdate] = field(default_factory=list)
    ignored_reason: str | None = None
    #: Keys under which the store indexes the new case for later lookups
    #: (e.g. ``("message_id", "<abc@x>")``) so replies and episodes find it.
    index_keys: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def ignored(cls, reason: str) -> MapResult:
        """A record deliberately not turned into a case (auto-reply, heartbeat...)."""
        return cls(ignored_reason=reason)


class MapContext(Protocol):
    """Store-backed lookups available to mappers and enrichers (same transaction)."""

    blobs: BlobStore
    now: datetime
    timezone: str

    def find_case_by_key(self, key_type: str, key: str) -> str | None:
        """Return the case_id indexed under (key_type, key), if any."""
        ...

    def get_case(self, case_id: str) -> Case | None:
        """Load a stored case."""
        ...

    def state_get(self, namespace: str, key: str) -> dict[str, Any] | None:
        """Read a mapper-owned state value (e.g. an IoT fault episode)."""
        ...

    def state_put(self, namespace: str, key: str, value: dict[str, Any] | None) -> None:
        """Write (or with None delete) a mapper-owned state value."""
        ...

    def state_scan(self, namespace: str, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        """List state values in a namespace whose key starts with ``prefix``."""
        ...

    def nearby_cases(
        self,
        *,
        category_code: str | None,
        since: datetime,
        until: datetime | None = None,
        lat: float | None = None,
        lon: float | None = None,
        radius_m: float | None = None,
        community: str | None = None,
        address: str | None = None,
        reporter_key: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Candidate earlier cases for repeat/duplicate linking (index-backed, bounded)."""
        ...


class Mapper(Protocol):
    """Turns raw records of one channel into cases.

    Optional attribute ``reads_store = False``: the mapper uses nothing of the context but
    ``timezone`` (no lookups, no state), so the process stage may map a whole batch before
    saving any of it. Without it a record is mapped at its turn.
    """

    def map(self, raw: RawRecord, ctx: MapContext) -> MapResult:
        """Map one raw record. Raise :class:`MappingError` for bad input."""
        ...


class Sweeper(Protocol):
    """Optional on a mapper: time-based work not triggered by a record.

    Called once per process run (and periodically by ``listen``) inside a process transaction,
    e.g. to open a communication-lost episode for a device that went silent. The results are
    saved like mapped records (cases are enriched and routed; updates queued).
    """

    def sweep(self, ctx: MapContext) -> list[MapResult]:
        """Return cases/updates due at ``ctx.now``."""
        ...


class Enricher(Protocol):
    """Adds classification, urgency, deadlines, location, privacy or links to a case.

    Optional attribute ``reads_store = False``: the enricher reads nothing from the context,
    so it may run on a batch's cases before the earlier ones are saved (see
    :class:`Mapper`). Without it the enricher runs at the record's turn.
    """

    name: str

    def enrich(self, case: Case, ctx: MapContext) -> None:
        """Enrich ``case`` in place. Must be deterministic for the same input and state."""
        ...
