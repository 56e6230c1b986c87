"""Location from free text: Chinese address patterns and a gazetteer of places.

Structured locations from the reporter, the upstream platform, a device registry or photo EXIF
win; this enricher only fills what is missing, and records how (``location.source``, and the
matched place in ``extra["location_match"]``) and how sure it is (``location.confidence``):

1. an address in the text (省/市/区/县/街道/镇/路/街/巷/小区/花园/社区… then 号/栋/单元/室) becomes
   ``location.address`` when the case has none;
2. the address (or else the whole message) is matched against the gazetteer (communities,
   estates, roads, landmarks → district / street / community / grid, lat/lon); the most
   specific place wins (estate > landmark > community > road);
3. a case that has coordinates but no district (a device, a photo) gets the district, street,
   community and grid of the nearest gazetteer place within ``snap_m`` metres.

Address finding is anchored on the suffix words, walking back over the place name, so it costs
one pass over the text instead of a backtracking pattern tried at every character.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from normalizer.case import Case, LocationSource
from normalizer.taxonomy import TermMatcher, canon
from normalizer.textnorm import message_text, normalize

DEFAULT_GAZETTEER = Path(__file__).resolve().parent / "data" / "gazetteer.yaml"
#: More specific places win: an estate beats the road it is on.
KIND_RANK = {"estate": 4, "landmark": 3, "community": 2, "road": 1}
PLACE_KINDS = tuple(KIND_RANK)

_SUFFIX = re.compile(r"自治区|街道|大道|胡同|小区|花园|新村|家园|公寓|大厦|社区"
                     r"|省|市|区|县|镇|乡|路|街|巷|弄|苑")
_ADMIN = frozenset("省市区县镇乡")
#: Characters that end a place name when walking back from a suffix (verbs, particles...).
_STOP = frozenset("的在住是了我你他她它们家到从往和与及跟对向把被给让叫说就都也还又很太离近旁边"
                  "附门口前后外这那个有没该请问")
_LATIN = re.compile(r"[A-Za-z]")
_NUMBER = re.compile(r"(?:[0-9一二三四五六七八九十百零]+(?:号楼|号院|号|栋|幢|座|弄))?"
                     r"(?:[0-9一二三四五六七八九十]+单元)?(?:[0-9]+(?:室|楼|层))?")
_EN_ADDRESS = re.compile(r"(?:no\.?\s*)?\d+[a-z]?,?\s+(?:[a-z]+\s){1,3}"
                         r"(?:road|rd|street|st|avenue|ave|lane|ln)\b", re.IGNORECASE)
_MAX_NAME = 8


@dataclass
class Place:
    """A gazetteer entry."""

    name: str
    kind: str
    district: str | None = None
    street: str | None = None
    community: str | None = None
    grid: str | None = None
    lat: float | None = None
    lon: float | None = None


@dataclass
class Gazetteer:
    """Places by normalized name (and alias), with one alternation to find them in text."""

    places: dict[str, Place]
    matcher: TermMatcher
    source: str = ""
    #: places with coordinates and a district, each once, in file order (for ``nearest``)
    _located: list[Place] | None = field(default=None, repr=False)

    def find(self, text: str) -> list[Place]:
        """Places named in ``text``, most specific first."""
        if not self.matcher or not text:
            return []
        found = {term for term, _, _ in self.matcher.find(normalize(text))}
        uniq = {id(self.places[n]): self.places[n] for n in found}
        return sorted(uniq.values(), key=lambda p: (-KIND_RANK.get(p.kind, 0), -len(p.name),
                                                    p.name))

    def nearest(self, lat: float, lon: float, max_m: float) -> tuple[Place, float] | None:
        """The nearest place with an area (district) within ``max_m`` metres, if any."""
        if self._located is None:
            self._located = [p for p in {id(p): p for p in self.places.values()}.values()
                             if p.lat is not None and p.lon is not None and p.district]
        best: tuple[Place, float] | None = None
        # a place further north or south than max_m (plus a metre for rounding) is too far
        # whatever its longitude: skip the distance for it
        max_dlat = (max_m + 1.0) / 111_320.0
        for p in self._located:
            if abs(p.lat - lat) > max_dlat:  # type: ignore[operator]
                continue
            d = _distance_m(lat, lon, p.lat, p.lon)  # type: ignore[arg-type]
            if d <= max_m and (best is None or d < best[1]):
                best = (p, d)
        return best


def _distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    dy = (lat2 - lat1) * 111_320.0
    dx = (lon2 - lon1) * 111_320.0 * math.cos(math.radians((lat1 + lat2) / 2))
    return math.hypot(dx, dy)


def load_gazetteer(path: str | Path | None = None) -> Gazetteer:
    """Load a gazetteer YAML file (default: the shipped demo one), cached per file version.

    Raises:
        ValueError: naming the bad entry.
    """
    p = Path(path) if path else DEFAULT_GAZETTEER
    return _load_cached(str(p.resolve()), p.stat().st_mtime)


@lru_cache(maxsize=4)
def _load_cached(path: str, _mtime: float) -> Gazetteer:
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    places: dict[str, Place] = {}
    for i, p in enumerate(doc.get("places") or []):
        if not isinstance(p, dict) or not p.get("name"):
            raise ValueError(f"gazetteer places[{i}]: expected a mapping with a name")
        unknown = set(p) - set(Place.__dataclass_fields__) - {"aliases"}
        if unknown:
            raise ValueError(f"gazetteer places[{i}] ({p['name']}): unknown keys "
                             f"{sorted(unknown)}")
        kind = str(p.get("kind") or "landmark")
        if kind not in KIND_RANK:
            raise ValueError(f"gazetteer places[{i}] ({p['name']}): kind must be one of "
                             f"{list(PLACE_KINDS)}")
        fields: dict[str, Any] = {k: p.get(k) for k in Place.__dataclass_fields__}
        fields["kind"] = kind
        place = Place(**fields)
        for name in [place.name, *(p.get("aliases") or [])]:
            places[canon(str(name))] = place
    return Gazetteer(places, TermMatcher(list(places)), source=path)


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def extract_address(text: str) -> str | None:
    """The longest Chinese (or English) address-like span in ``text``.

    Examples: ``北京市朝阳区幸福路88号``, ``幸福里社区5栋2单元301室``, ``No. 12 Riverside Road``.
    """
    if not text:
        return None
    spans: list[tuple[int, int]] = []
    prev_end = 0
    for m in _SUFFIX.finditer(text):
        s, e = m.start(), m.end()
        if s < prev_end:
            continue
        i = s
        floor = max(prev_end, s - _MAX_NAME)
        while i > floor and _is_cjk(text[i - 1]) and text[i - 1] not in _STOP:
            i -= 1
        name_len = s - i
        if name_len < (1 if m.group(0) in _ADMIN and name_len and spans and
                       spans[-1][1] == i else 2):
            continue
        num = _NUMBER.match(text, e)
        end = num.end() if num else e
        if spans and spans[-1][1] == i:  # 北京市 + 朝阳区 + 幸福路: one address
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((i, end))
        prev_end = end
    found = [text[a:b] for a, b in spans]
    if _LATIN.search(text):
        found += [m.group(0).strip() for m in _EN_ADDRESS.finditer(text)]
    found = [f for f in found if len(f) >= 3]
    return max(found, key=len) if found else None


class Locator:
    """Enricher: fills location from the address text or the message via the gazetteer."""

    name = "location"
    #: works on the case alone (nothing read from the store)
    reads_store = False

    def __init__(self, gazetteer: Gazetteer, snap_m: float = 300.0) -> None:
        self.gazetteer = gazetteer
        self.snap_m = snap_m

    def enrich(self, case: Case, ctx: object) -> None:
        """Fill missing location fields; never overwrite ones the channel set."""
        loc = case.location
        text = message_text(case.title, case.description)
        from_text = False
        if not loc.address:
            addr = extract_address(text)
            if addr:
                loc.address = addr
                from_text = True
        places = self.gazetteer.find(loc.address or "")
        matched_in = "address"
        if not places:
            places, matched_in = self.gazetteer.find(text), "text"
        if places:
            best = places[0]
            for attr in ("district", "street", "community", "grid"):
                if getattr(loc, attr) is None and getattr(best, attr):
                    setattr(loc, attr, getattr(best, attr))
            if loc.lat is None and best.lat is not None:
                loc.lat, loc.lon = best.lat, best.lon
                loc.source = LocationSource.text
                loc.confidence = 0.9 if best.kind in ("estate", "landmark", "community") else 0.6
            elif loc.source is LocationSource.unknown:
                loc.source = LocationSource.text
                loc.confidence = 0.6
            case.extra["location_match"] = {"place": best.name, "kind": best.kind,
                                            "matched_in": matched_in}
            return
        if loc.lat is not None and loc.lon is not None and not loc.district:
            near = self.gazetteer.nearest(loc.lat, loc.lon, self.snap_m)
            if near is not None:
                place, dist = near
                for attr in ("district", "street", "community", "grid"):
                    if getattr(loc, attr) is None and getattr(place, attr):
                        setattr(loc, attr, getattr(place, attr))
                case.extra["location_match"] = {"place": place.name, "kind": place.kind,
                                                "matched_in": "coordinates",
                                                "distance_m": round(dist)}
            return
        if from_text and loc.source is LocationSource.unknown:
            loc.source = LocationSource.text
            loc.confidence = 0.3
