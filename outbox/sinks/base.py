"""The sink contract: deliver one case (or one update) downstream, exactly once.

Every delivery carries an idempotency key that is stable across retries and replays. A sink
returns a :class:`Receipt` on success or raises :class:`DeliveryError`, classified as retryable
or not, so the delivery loop can back off, honour ``Retry-After`` or dead-letter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable


@dataclass
class Delivery:
    """One unit of work for a sink.

    Attributes:
        outbox_id: the outbox row.
        kind: ``case`` (a new case) or ``update`` (a follow-up on a delivered case).
        idempotency_key: stable across retries; send it so the remote can dedupe.
        case: the case as JSON (schema-versioned).
        update: the update as JSON when ``kind == "update"``.
        attempt: 1 for the first try.
        first_attempt_at: when the first attempt was made (None on the first try).
        previous_error: the last failure, for sinks that must reconcile after ambiguous errors.
        remote_id: the remote id of the case if an earlier delivery created it (updates).
    """

    outbox_id: int
    kind: str
    idempotency_key: str
    case: dict[str, Any]
    update: dict[str, Any] | None = None
    attempt: int = 1
    first_attempt_at: datetime | None = None
    previous_error: dict[str, Any] | None = None
    remote_id: str | None = None


@dataclass
class Receipt:
    """Proof of delivery."""

    remote_id: str | None = None
    status_code: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class DeliveryError(Exception):
    """A failed delivery.

    Args:
        reason: a clear, secret-free message for the operator.
        retryable: try again later (timeouts, 5xx, 429...) or dead-letter now (4xx).
        retry_after: seconds the remote asked us to wait, if it said.
        status_code: HTTP status, if any.
        body: the response body (truncated), for the dead letter.
        ambiguous: the request may have reached the remote (timeout after send, reset);
            sinks without idempotency must reconcile before posting again.
    """

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status_code: int | None = None,
        body: str | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.status_code = status_code
        self.body = body
        self.ambiguous = ambiguous

    def as_dict(self) -> dict[str, Any]:
        """The error as stored in the outbox row."""
        return {
            "reason": self.reason,
            "retryable": self.retryable,
            "retry_after": self.retry_after,
            "status_code": self.status_code,
            "body": (self.body or "")[:2000] or None,
            "ambiguous": self.ambiguous,
        }


@runtime_checkable
class Sink(Protocol):
    """A downstream case system."""

    type_name: ClassVar[str]
    name: str

    def deliver(self, delivery: Delivery) -> Receipt:
        """Deliver one case or update. Raise :class:`DeliveryError` on failure."""
        ...

    def close(self) -> None:
        """Release sessions and files."""
        ...
