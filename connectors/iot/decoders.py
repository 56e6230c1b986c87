"""Decoders: an MQTT message → a normalized device report (a plain dict).

A report is ``{"device_id", "event_id", "time", "status", "faults", "cleared", "codes",
"unknown_codes", "values", "decoder"}`` where ``status`` is fault, clear, heartbeat or
telemetry. Anything that cannot be decoded raises :class:`DecodeError` and becomes a dead letter
with the raw bytes; the connector goes on.

Formats:

* ``json``: any JSON object; field paths from the subscription's ``fields``.
* ``chirpstack``: ChirpStack v4 ``event/up`` (``deviceInfo.devEui``, ``deduplicationId``,
  ``time``, decoded ``object``, base64 ``data``).
* ``tts``: The Things Stack v3 uplink (``end_device_ids.dev_eui``, ``correlation_ids``,
  ``received_at``, ``uplink_message.decoded_payload``, ``uplink_message.f_cnt``).
* ``function``: a user callable ``(topic, payload) -> dict`` for raw binary payloads.

JSON is parsed by orjson, which reads an integer beyond 64 bits as a float: when a value the
report keeps may be one (a float of 2**63 or more), the payload is read again by :mod:`json`,
so such integers are kept exactly (the raw text is kept in the record either way).
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import msgspec
import orjson

from connectors.base import maybe_lossy
from connectors.iot.config import DecoderType, Subscription
from normalizer.iot.faults import classify_codes


class DecodeError(ValueError):
    """The payload cannot be decoded into a device report."""


_MISSING = object()


def dig(obj: Any, path: str | None) -> Any:
    """Follow a dotted path into nested dicts (None when any step is missing)."""
    if path is None:
        return _MISSING
    if "." not in path:
        return obj.get(path) if isinstance(obj, dict) else None
    cur = obj
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return None
    return cur


_UTC_ISO = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|\+00:00)$")


def parse_time(value: Any) -> str | None:
    """Normalize a report time to ISO 8601 UTC with microseconds (naive times are UTC).

    LoRaWAN servers write UTC with nanoseconds (``2026-11-24T20:01:02.123456789Z``); that
    common form is rewritten by a regular expression, everything else goes through datetime.
    """
    if value in (None, ""):
        return None
    if isinstance(value, str):
        m = _UTC_ISO.match(value)
        if m is not None:
            frac = (m.group(2) or "")[:6].ljust(6, "0")
            return f"{m.group(1)}.{frac}+00:00"
    if isinstance(value, bool):
        raise DecodeError(f"time: expected ISO 8601 or epoch seconds, got {value!r}")
    if isinstance(value, (int, float)):
        try:
            secs = float(value) / (1000.0 if value > 1e11 else 1.0)  # epoch ms from some devices
            return datetime.fromtimestamp(secs, timezone.utc).isoformat(timespec="microseconds")
        except (OverflowError, ValueError, OSError) as exc:  # NaN, beyond year 9999
            raise DecodeError(f"time: epoch seconds out of range: {value!r}") from exc
    if isinstance(value, str):
        text = value.strip().replace("Z", "+00:00")
        # Go/ChirpStack/TTS emit nanoseconds; Python takes microseconds
        if "." in text:
            head, _, rest = text.partition(".")
            digits = "".join(ch for ch in rest if ch.isdigit())
            tail = rest[len(digits):]
            text = f"{head}.{digits[:6]}{tail}"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError as exc:
            raise DecodeError(f"time: not an ISO 8601 time: {value!r}") from exc
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")
    raise DecodeError(f"time: expected ISO 8601 or epoch seconds, got {type(value).__name__}")


def _codes(value: Any) -> list[str]:
    if value is None or value is _MISSING or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v not in (None, "")]
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, bool):
        return ["lamp_failure"] if value else ["clear"]
    raise DecodeError(f"fault: expected a code or a list of codes, got {type(value).__name__}")


def _ident(value: Any, what: str) -> str:
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        text = str(value).strip()
        if len(text) > 200:
            raise DecodeError(f"{what}: longer than 200 characters")
        return text
    raise DecodeError(f"{what}: missing or not a string")


def _object(payload: bytes) -> dict[str, Any]:
    """The payload's JSON object, parsed by orjson (see :func:`_exact_object`)."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise DecodeError(f"payload is not UTF-8 text: {uexc.reason} at byte "
                              f"{uexc.start}") from exc
        raise DecodeError(f"payload is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise DecodeError(f"payload: expected a JSON object, got {type(doc).__name__}")
    return doc


def _exact_object(payload: bytes) -> dict[str, Any]:
    """The payload's object parsed by :mod:`json` (integers of any size stay exact).

    Only for payloads orjson already accepted as one JSON object, so both read the same
    values but for integers beyond 64 bits.
    """
    doc: dict[str, Any] = json.loads(payload)
    return doc


class _Device(msgspec.Struct, rename="camel"):
    dev_eui: str


class _Uplink(msgspec.Struct, rename="camel"):
    """The fields of a ChirpStack v4 uplink the plain decoder reads (others are skipped)."""

    device_info: _Device
    deduplication_id: str
    time: str
    object: dict[str, Any] | None = None
    f_cnt: int | None = None
    f_port: int | None = None
    data: str | None = None


#: msgspec.ValidationError is a DecodeError: a field of another type ends the fast path too
_UPLINK = msgspec.json.Decoder(_Uplink)


class Decoder:
    """Decodes the messages of one subscription."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.kind = sub.decoder
        self.kind_name = sub.decoder.value
        #: the record keeps the payload as text (else base64): all but function decoders
        self.text_payloads = sub.decoder is not DecoderType.function
        #: reports hold only values parsed from JSON (a user function may return anything)
        self.json_values = sub.decoder is not DecoderType.function
        self.fn: Callable[[str, bytes], dict[str, Any]] | None = None
        if sub.decoder is DecoderType.function:
            self.fn = load_function(sub.function or "")
        f = sub.fields
        self._fault_key = f.fault or "fault"
        #: ChirpStack with the documented field names (the common, hot case): a straight-line
        #: decoder that gives what the general one gives, without its per-field lookups
        self._chirpstack_plain = (
            sub.decoder is DecoderType.chirpstack and "." not in self._fault_key
            and f.device_id is None and f.event_id is None and f.time is None
            and f.values is None)

    def decode(self, topic: str, payload: bytes) -> dict[str, Any]:
        """Decode one message (raises DecodeError)."""
        if self._chirpstack_plain:
            report = self._chirpstack(payload)
            if report is not None:
                return report
        return self.decode_general(topic, payload)

    def _chirpstack(self, payload: bytes) -> dict[str, Any] | None:
        """:meth:`decode_general` for a ChirpStack subscription without field paths, for the
        common shape of an uplink; None for anything else, which :meth:`decode_general` then
        decodes or rejects.

        The common shape: UTF-8 text, the device EUI, deduplication id and time as strings
        (a UTC time), ``object`` an object or absent, ``fCnt`` / ``fPort`` integers, ``data``
        a string, the fault code one string or none. msgspec reads just those fields into a
        :class:`_Uplink` (the rest of the document is checked but not built into objects,
        which is where orjson spends its time) and reads integers of any size exactly. One
        difference from orjson: a number beyond the double range (``1e400``) in a field the
        decoder does not read is accepted here (stored with the rest of the text), where the
        general decoder rejects the payload.
        """
        if not payload.isascii():
            try:
                payload.decode("utf-8")  # msgspec does not check the strings it skips
            except UnicodeDecodeError:
                return None
        try:
            up = _UPLINK.decode(payload)
        except (msgspec.DecodeError, RecursionError):
            return None
        device = up.device_info.dev_eui.strip()
        event_id = up.deduplication_id
        if not device or len(device) > 200 or not event_id:
            return None
        m = _UTC_ISO.match(up.time)
        if m is None:
            return None
        day, frac, _ = m.groups()
        obj = up.object
        if obj is None:
            obj = {}
        key = self._fault_key
        code = obj.get(key)
        if code is None or code == "":
            # telemetry or a heartbeat: its values are not kept (see decode_general)
            report = {"device_id": device, "event_id": event_id,
                      "time": f"{day}.{(frac or '')[:6].ljust(6, '0')}+00:00",
                      "status": "telemetry" if len(obj) > (key in obj) else "heartbeat",
                      "faults": [], "cleared": [], "codes": [], "decoder": self.kind_name}
        else:
            if type(code) is not str:
                return None
            values = {k: v for k, v in obj.items() if k != key}
            codes = [code]
            c = classify_codes(codes, self.sub.codes, bool(values))
            report = {"device_id": device, "event_id": event_id,
                      "time": f"{day}.{(frac or '')[:6].ljust(6, '0')}+00:00",
                      "status": c.status, "faults": c.faults, "cleared": c.cleared,
                      "codes": codes, "decoder": self.kind_name}
            if c.status != "heartbeat" and c.status != "telemetry":
                report["values"] = values
            if c.unknown:
                report["unknown_codes"] = c.unknown
        fcnt, fport = up.f_cnt, up.f_port
        if fcnt is not None and fport is not None:
            lora = {"fCnt": fcnt, "fPort": fport}
        else:
            lora = {}
            if fcnt is not None:
                lora["fCnt"] = fcnt
            if fport is not None:
                lora["fPort"] = fport
        if not obj and up.data:
            lora["data"] = up.data
        if lora:
            report["lorawan"] = lora
        return report

    def decode_general(self, topic: str, payload: bytes) -> dict[str, Any]:
        """Decode one message with any decoder and field paths (raises DecodeError).

        JSON is parsed by orjson; when a value the report depends on may be an integer beyond
        64 bits that orjson read as a float (:func:`connectors.base.maybe_lossy`), the payload
        is decoded again from :mod:`json`'s exact reading.
        """
        if self.kind is DecoderType.function:
            return self._function(topic, payload)
        doc = _object(payload)
        try:
            report, kept = self._from_doc(doc)
        except DecodeError:
            if not maybe_lossy(doc):
                raise
            return self._from_doc(_exact_object(payload))[0]
        if maybe_lossy(kept):
            return self._from_doc(_exact_object(payload))[0]
        return report

    def _function(self, topic: str, payload: bytes) -> dict[str, Any]:
        assert self.fn is not None
        try:
            out = self.fn(topic, payload)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"decoder {self.sub.function} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(out, dict):
            raise DecodeError(f"decoder {self.sub.function} returned "
                              f"{type(out).__name__}, expected a dict")
        device = _ident(out.get("device_id"), "device_id")
        codes = _codes(out.get("fault", out.get("codes")))
        values = out.get("values") if isinstance(out.get("values"), dict) else {}
        return self._report(device, out.get("event_id"), out.get("time"), codes, values, {})

    def _from_doc(self, doc: dict[str, Any]) -> tuple[dict[str, Any], tuple[Any, ...]]:
        """The report of a parsed JSON payload, and the raw values it keeps that
        :func:`connectors.base.maybe_lossy` must check (fault code, values, LoRaWAN fields)."""
        f = self.sub.fields
        if self.kind is DecoderType.chirpstack:
            info = doc.get("deviceInfo")
            if not isinstance(info, dict):
                raise DecodeError("not a ChirpStack v4 uplink event: no deviceInfo object")
            device = _ident(dig(doc, f.device_id) if f.device_id else info.get("devEui"),
                            "deviceInfo.devEui")
            event_id = dig(doc, f.event_id) if f.event_id else doc.get("deduplicationId")
            obj = doc.get("object") if isinstance(doc.get("object"), dict) else {}
            time_v = dig(doc, f.time) if f.time else doc.get("time")
            base = obj
            extra = {"fCnt": doc.get("fCnt"), "fPort": doc.get("fPort")}
            if not obj and doc.get("data"):
                extra["data"] = doc.get("data")
        elif self.kind is DecoderType.tts:
            ids = doc.get("end_device_ids")
            up = doc.get("uplink_message")
            if not isinstance(ids, dict) or not isinstance(up, dict):
                raise DecodeError("not a The Things Stack v3 uplink: no end_device_ids / "
                                  "uplink_message")
            device = _ident(dig(doc, f.device_id) if f.device_id else
                            (ids.get("dev_eui") or ids.get("device_id")), "end_device_ids.dev_eui")
            if f.event_id:
                event_id = dig(doc, f.event_id)
            else:
                corr = [c for c in doc.get("correlation_ids") or []
                        if isinstance(c, str) and c.startswith("as:up:")]
                # f_cnt restarts on re-join, so it only counts together with the time
                event_id = corr[0] if corr else (
                    f"{up.get('f_cnt', 0)}@{doc.get('received_at') or up.get('received_at')}"
                    if (doc.get("received_at") or up.get("received_at")) else None)
            obj = up.get("decoded_payload") if isinstance(up.get("decoded_payload"), dict) else {}
            time_v = dig(doc, f.time) if f.time else (doc.get("received_at")
                                                       or up.get("received_at"))
            base = obj
            extra = {"f_cnt": up.get("f_cnt"), "f_port": up.get("f_port")}
            if not obj and up.get("frm_payload"):
                extra["frm_payload"] = up.get("frm_payload")
        else:
            device = _ident(dig(doc, f.device_id or "device_id"), f.device_id or "device_id")
            event_id = dig(doc, f.event_id or "event_id")
            time_v = dig(doc, f.time or "time")
            base, extra = doc, {}
        fault_key = f.fault or "fault"
        code = dig(base, fault_key)
        codes = _codes(code)
        if f.values:
            values = dig(base, f.values)
        elif self.kind is DecoderType.json:
            values = doc.get("values")
        elif codes:
            values = {k: v for k, v in base.items() if k != fault_key}
        else:
            # no code: the report is telemetry or a heartbeat and its values are not kept,
            # only whether there are any matters
            values = base if len(base) > (fault_key in base) else {}
        if values is not None and not isinstance(values, dict):
            raise DecodeError(f"values: expected an object, got {type(values).__name__}")
        report = self._report(device, event_id, time_v, codes, values or {}, extra)
        return report, (code, report.get("values"), extra)

    def _report(self, device: str, event_id: Any, time_v: Any, codes: list[str],
                values: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        if event_id is not None and not isinstance(event_id, (str, int)):
            raise DecodeError("event_id: expected a string or an integer")
        if codes:
            c = classify_codes(codes, self.sub.codes, bool(values))
            status, faults, cleared, unknown = c.status, c.faults, c.cleared, c.unknown
        else:  # the common case: what classify_codes([]) says, without its cost
            status, faults, cleared, unknown = ("telemetry" if values else "heartbeat"), [], [], []
        report = {"device_id": device,
                  "event_id": str(event_id) if event_id not in (None, "") else None,
                  "time": parse_time(time_v), "status": status, "faults": faults,
                  "cleared": cleared, "codes": codes, "decoder": self.kind_name}
        if status != "heartbeat" and status != "telemetry":
            # only faults and clears need their values later; telemetry stays in the raw text
            report["values"] = values
        if unknown:
            report["unknown_codes"] = unknown
        lora = {k: v for k, v in extra.items() if v is not None}
        if lora:
            report["lorawan"] = lora
        return report


def load_function(path: str) -> Callable[[str, bytes], dict[str, Any]]:
    """Import a user decoder ``"package.module:callable"``.

    Raises:
        ValueError: naming the path when it cannot be imported or is not callable.
    """
    module, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"decoder function {path!r} cannot be imported: {exc}") from exc
    if not callable(fn):
        raise ValueError(f"decoder function {path!r} is not callable")
    return fn  # type: ignore[no-any-return]
