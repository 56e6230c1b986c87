"""Mainland China working days: `chinese-calendar` plus an override file for unknown years.

The State Council publishes each year's holidays and make-up working days (调休) late in the
previous year; `chinese-calendar` 1.11.0 ships them for 2004–2026. For a later year, put the
published schedule in the override file (``enrichment.calendar_override``; the shipped
``normalizer/data/calendar_override.yaml`` documents the format)::

    2027:
      source: 国办发明电〔2026〕N号   # where the dates come from (recorded on every case)
      holidays: [2027-01-01, ...]     # days off that would otherwise be working days
      workdays: [2027-02-20, ...]     # 调休: weekend days that are working days

A year in the override file replaces the library's data for that year. A date in a year neither
knows raises :class:`CalendarRangeError` (the hub never guesses silently); the deadline enricher
turns that into a review flag, or into a flagged Monday–Friday estimate when
``enrichment.deadlines.calendar_fallback: weekdays`` is set.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chinese_calendar
import yaml
from chinese_calendar import constants as _cc

DEFAULT_OVERRIDE = Path(__file__).resolve().parent / "data" / "calendar_override.yaml"
LIBRARY_FIRST_YEAR = min(_cc.holidays).year
LIBRARY_LAST_YEAR = max(max(_cc.holidays), max(_cc.workdays)).year


class CalendarRangeError(LookupError):
    """The calendar has no data for this year."""

    def __init__(self, year: int) -> None:
        super().__init__(
            f"no working-day data for {year}: chinese-calendar "
            f"{getattr(chinese_calendar, '__version__', '?')} knows {LIBRARY_FIRST_YEAR}-"
            f"{LIBRARY_LAST_YEAR}; add the State Council schedule for {year} to "
            f"enrichment.calendar_override")
        self.year = year


class CalendarFileError(ValueError):
    """The override file is invalid (the message names the entry)."""


@dataclass
class WorkCalendar:
    """Working days with chinese-calendar and overrides (results cached per day)."""

    holidays: set[dt.date] = field(default_factory=set)
    workdays: set[dt.date] = field(default_factory=set)
    override_years: dict[int, str] = field(default_factory=dict)
    #: years not known anywhere that are counted Monday–Friday (the flagged fallback)
    weekday_fallback: bool = False
    _cache: dict[dt.date, bool] = field(default_factory=dict, repr=False)
    #: (start, n) → add_workdays result: cases of one day all ask the same few questions
    _spans: dict[tuple[dt.date, int], dt.date] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, override: str | Path | None = None, *,
             weekday_fallback: bool = False) -> WorkCalendar:
        """Build the calendar, reading an override file if given.

        Raises:
            CalendarFileError: the override file is unreadable or invalid.
        """
        cal = cls(weekday_fallback=weekday_fallback)
        if override:
            try:
                doc = yaml.safe_load(Path(override).read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise CalendarFileError(f"calendar override {override}: {exc}") from exc
            cal.apply(doc, where=str(override))
        return cal

    def apply(self, doc: Any, where: str = "calendar override") -> None:
        """Add the years of a parsed override document.

        Raises:
            CalendarFileError: naming the bad entry.
        """
        if not isinstance(doc, dict):
            raise CalendarFileError(f"{where}: expected a mapping of year → schedule")
        for year, spec in doc.items():
            try:
                y = int(year)
            except (TypeError, ValueError) as exc:
                raise CalendarFileError(f"{where}: {year!r} is not a year") from exc
            if not isinstance(spec, dict):
                raise CalendarFileError(f"{where}.{y}: expected holidays/workdays lists")
            hol = _dates(spec.get("holidays"), y, f"{where}.{y}.holidays")
            work = _dates(spec.get("workdays"), y, f"{where}.{y}.workdays")
            both = set(hol) & set(work)
            if both:
                raise CalendarFileError(f"{where}.{y}: {min(both)} is both a holiday and a "
                                        f"working day")
            self.holidays.update(hol)
            self.workdays.update(work)
            self.override_years[y] = str(spec.get("source") or Path(where).name)
        self._cache.clear()
        self._spans.clear()

    @property
    def source(self) -> str:
        """Which calendar is in use (recorded in ``case.deadlines.calendar``)."""
        name = (f"chinese-calendar {getattr(chinese_calendar, '__version__', '?')} "
                f"({LIBRARY_FIRST_YEAR}-{LIBRARY_LAST_YEAR})")
        if self.override_years:
            name += " + override " + ", ".join(f"{y} ({s})" for y, s in
                                                sorted(self.override_years.items()))
        return name

    def knows(self, year: int) -> bool:
        """Tell whether the calendar has real data for ``year``."""
        return year in self.override_years or LIBRARY_FIRST_YEAR <= year <= LIBRARY_LAST_YEAR

    def is_workday(self, day: dt.date) -> bool:
        """Tell whether ``day`` is a working day.

        Raises:
            CalendarRangeError: when neither the library nor the override knows the year and
                the weekday fallback is off.
        """
        hit = self._cache.get(day)
        if hit is not None:
            return hit
        if day in self.workdays:
            result = True
        elif day in self.holidays:
            result = False
        elif day.year in self.override_years:
            result = day.weekday() < 5
        elif LIBRARY_FIRST_YEAR <= day.year <= LIBRARY_LAST_YEAR:
            result = bool(chinese_calendar.is_workday(day))
        elif self.weekday_fallback:
            result = day.weekday() < 5
        else:
            raise CalendarRangeError(day.year)
        self._cache[day] = result
        return result

    def add_workdays(self, start: dt.date, n: int) -> dt.date:
        """The n-th working day after ``start`` (``start`` itself not counted).

        With ``n == 0``: ``start`` if it is a working day, else the next working day.
        """
        hit = self._spans.get((start, n))
        if hit is not None:
            return hit
        day = start
        if n == 0:
            while not self.is_workday(day):
                day += dt.timedelta(days=1)
        else:
            left = n
            while left > 0:
                day += dt.timedelta(days=1)
                if self.is_workday(day):
                    left -= 1
        if len(self._spans) > 4096:
            self._spans.clear()
        self._spans[(start, n)] = day
        return day

    def unknown_years(self, start: dt.date, end: dt.date) -> list[int]:
        """Years between two dates the calendar has no real data for."""
        return [y for y in range(start.year, end.year + 1) if not self.knows(y)]


def _dates(values: object, year: int, where: str) -> list[dt.date]:
    if values is None:
        return []
    if not isinstance(values, list):
        raise CalendarFileError(f"{where}: expected a list of dates (YYYY-MM-DD)")
    out = []
    for v in values:
        try:
            d = v if isinstance(v, dt.date) else dt.date.fromisoformat(str(v))
        except ValueError as exc:
            raise CalendarFileError(f"{where}: {v!r} is not a date (YYYY-MM-DD)") from exc
        if d.year != year:
            raise CalendarFileError(f"{where}: {d} is not in {year}")
        out.append(d)
    return out
