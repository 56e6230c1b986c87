"""A user decoder for a made-up 4-byte streetlight frame: status, reserved, seq, lamp state."""

from __future__ import annotations

from typing import Any


def decode(topic: str, payload: bytes) -> dict[str, Any]:
    if len(payload) != 4:
        raise ValueError(f"expected 4 bytes, got {len(payload)}")
    status, _, seq, lamp = payload
    return {"device_id": topic.rsplit("/", 1)[-1], "event_id": seq,
            "fault": str(status), "values": {"lamp_on": bool(lamp)}}
