"""The one text format for times in the store: ISO 8601, UTC, microseconds, ``Z``."""

from __future__ import annotations

from datetime import datetime, timezone


def ts(dt: datetime) -> str:
    """Format an aware datetime for storage (sorts correctly as text)."""
    tz = dt.tzinfo
    if tz is not _UTC:
        if tz is None:
            raise ValueError("naive datetime given to the store")
        if dt.utcoffset():
            dt = dt.astimezone(_UTC)
    # isoformat is several times faster than strftime; same fixed-width text, and the offset
    # of a UTC time is always "+00:00"
    return dt.isoformat(timespec="microseconds")[:-6] + "Z"


_UTC = timezone.utc


def parse_ts(value: str | None) -> datetime | None:
    """Parse a stored time back into an aware datetime."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def now_utc() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(timezone.utc)
