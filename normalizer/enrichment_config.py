"""The ``enrichment:`` section and the enricher chain the process stage runs.

Every key is optional: ``enrichment: {}`` gives the full default behaviour with the shipped
taxonomy, gazetteer and calendar override (``normalizer/data/``). Order matters: classification
first (kind, linking and deadlines need the category), then the kind, location (linking needs
coordinates), privacy, urgency, linking (many reports raise urgency), and deadlines last (they
depend on urgency, kind and major-matter status).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from hub.config_types import Duration, StrictModel
from normalizer.mapping import Enricher

URGENCY_LEVELS = ("normal", "urgent", "emergency")
POLICIES = ("simple", "ordinary", "major", "emergency")


class LinkingConfig(StrictModel):
    """Repeat, duplicate and related-case linking."""

    enabled: bool = Field(default=True, description="false: no repeat / duplicate linking.")
    radius_m: float = Field(default=50.0, gt=0, description="Same place within this distance.")
    window: Duration = Field(default=30 * 86400, description="Look back this far (e.g. 30d).")
    related_threshold: float = Field(default=0.2, ge=0, le=1,
                                     description="Text similarity to call cases related.")
    duplicate_threshold: float = Field(default=0.35, ge=0, le=1,
                                       description="Text similarity to call a case a duplicate.")
    repeat_threshold: float = Field(default=0.1, ge=0, le=1,
                                    description="Text similarity for the same reporter's same "
                                                "matter elsewhere (repeat complaint).")
    duplicate_window: Duration = Field(default=7 * 86400,
                                       description="A duplicate is at most this much older.")
    urgent_after: int = Field(default=3, ge=2,
                              description="This many reports of one problem make it urgent.")
    candidates: int = Field(default=50, ge=1, le=500,
                            description="Earlier cases fetched per lookup (per index).")


class CategoryDeadlines(StrictModel):
    """Per-category overrides: a number for every level/policy or a mapping per level/policy."""

    respond_hours: float | dict[str, float] | None = Field(
        default=None, description="Hours, or {normal, urgent, emergency: hours}.")
    resolve_days: int | dict[str, int] | None = Field(
        default=None, description="Working days, or {simple, ordinary, major, emergency: days}.")

    @field_validator("respond_hours")
    @classmethod
    def _levels(cls, v: Any) -> Any:
        if isinstance(v, dict) and (bad := set(v) - set(URGENCY_LEVELS)):
            raise ValueError(f"unknown urgency levels {sorted(bad)}; use {list(URGENCY_LEVELS)}")
        return v

    @field_validator("resolve_days")
    @classmethod
    def _policies(cls, v: Any) -> Any:
        if isinstance(v, dict) and (bad := set(v) - set(POLICIES)):
            raise ValueError(f"unknown policies {sorted(bad)}; use {list(POLICIES)}")
        return v


class DeadlinesConfig(StrictModel):
    """Service levels."""

    respond_hours: dict[str, float] = Field(
        default_factory=dict, description="Hours to respond per urgency (normal, urgent, "
        "emergency); defaults 24, 12, 2.")
    resolve_days: dict[str, int] = Field(
        default_factory=dict, description="Working days to resolve per policy (simple, "
        "ordinary, major, emergency); defaults 0 (same day), 3, 7, 1.")
    simple_kinds: list[str] = Field(
        default_factory=lambda: ["inquiry", "praise"],
        description="Kinds answered the same working day (the 'simple' policy).")
    same_day_cutoff: str = Field(
        default="17:00", pattern=r"^\d{1,2}:\d{2}$",
        description="Simple matters received after this local time are due the next working "
                    "day.")
    per_category: dict[str, CategoryDeadlines] = Field(
        default_factory=dict, description="Category code → respond_hours / resolve_days.")
    calendar_fallback: str = Field(
        default="flag", pattern=r"^(flag|weekdays)$",
        description="Years the calendar does not know: 'flag' (no resolve_by, needs review) "
                    "or 'weekdays' (Monday-Friday estimate, flagged provisional).")

    @field_validator("respond_hours")
    @classmethod
    def _levels(cls, v: dict[str, float]) -> dict[str, float]:
        if bad := set(v) - set(URGENCY_LEVELS):
            raise ValueError(f"unknown urgency levels {sorted(bad)}; use {list(URGENCY_LEVELS)}")
        return v

    @field_validator("resolve_days")
    @classmethod
    def _policies(cls, v: dict[str, int]) -> dict[str, int]:
        if bad := set(v) - set(POLICIES):
            raise ValueError(f"unknown policies {sorted(bad)}; use {list(POLICIES)}")
        return v


class EnrichmentConfig(StrictModel):
    """The ``enrichment:`` section of feedback-hub.yaml (all optional)."""

    enabled: bool = Field(default=True, description="false: cases go out as mapped.")
    taxonomy: str | None = Field(default=None, description="Taxonomy YAML (default: the "
                                 "shipped one for a Chinese city, normalizer/data/taxonomy.yaml).")
    gazetteer: str | None = Field(default=None, description="Places YAML (default: the demo "
                                  "gazetteer, normalizer/data/gazetteer.yaml).")
    calendar_override: str | None = Field(default=None, description="Holidays and 调休 "
                                          "working days for years chinese-calendar does not "
                                          "know (default: normalizer/data/"
                                          "calendar_override.yaml).")
    min_confidence: float = Field(default=0.45, ge=0, le=1, description="Below this the "
                                  "category is flagged for review with the top candidates.")
    location_snap_m: float = Field(default=300.0, ge=0, description="Coordinates without a "
                                   "district take the nearest gazetteer place within this.")
    linking: LinkingConfig = Field(default_factory=LinkingConfig, description="Repeats.")
    deadlines: DeadlinesConfig = Field(default_factory=DeadlinesConfig, description="SLAs.")


def _path(p: str | None, base_dir: str) -> str | None:
    if not p:
        return None
    path = Path(p).expanduser()
    return str(path if path.is_absolute() else Path(base_dir) / path)


def validate_enrichment(data: dict[str, Any], *, base_dir: str = ".") -> EnrichmentConfig:
    """Validate the section; files named in it must exist and load.

    Raises:
        pydantic.ValidationError: bad keys or values.
        ValueError: a file that is missing or invalid (the message names the key).
    """
    from normalizer.location import load_gazetteer
    from normalizer.taxonomy import TaxonomyError, load_taxonomy
    from normalizer.workcalendar import CalendarFileError, WorkCalendar

    cfg = EnrichmentConfig.model_validate(data or {})
    for key in ("taxonomy", "gazetteer", "calendar_override"):
        p = _path(getattr(cfg, key), base_dir)
        if p and not Path(p).is_file():
            raise ValueError(f"enrichment.{key}: file not found: {p}")
    try:
        tax = load_taxonomy(_path(cfg.taxonomy, base_dir))
    except TaxonomyError as exc:
        raise ValueError(f"enrichment.taxonomy: {exc}") from exc
    for code in cfg.deadlines.per_category:
        if code not in tax.categories:
            raise ValueError(f"enrichment.deadlines.per_category: no category {code!r} in the "
                             f"taxonomy; use one of {sorted(tax.categories)}")
    try:
        load_gazetteer(_path(cfg.gazetteer, base_dir))
    except (OSError, ValueError) as exc:
        raise ValueError(f"enrichment.gazetteer: {exc}") from exc
    try:
        WorkCalendar.load(_path(cfg.calendar_override, base_dir))
    except CalendarFileError as exc:
        raise ValueError(f"enrichment.calendar_override: {exc}") from exc
    return cfg


def build_enrichers(data: dict[str, Any], *, base_dir: str = ".",
                    timezone: str = "Asia/Shanghai") -> list[Enricher]:
    """Build the ordered enricher chain from config (files are loaded once, here)."""
    from normalizer.classify import Classifier
    from normalizer.deadlines import DeadlineSetter
    from normalizer.kind import KindDetector
    from normalizer.linking import Linker
    from normalizer.location import Locator, load_gazetteer
    from normalizer.privacy import PiiFlagger
    from normalizer.taxonomy import load_taxonomy
    from normalizer.urgency import UrgencyAssessor
    from normalizer.workcalendar import DEFAULT_OVERRIDE, WorkCalendar

    cfg = validate_enrichment(data, base_dir=base_dir)
    if not cfg.enabled:
        return []
    tax = load_taxonomy(_path(cfg.taxonomy, base_dir))
    chain: list[Enricher] = [
        Classifier(tax, min_confidence=cfg.min_confidence),
        KindDetector(tax),
        Locator(load_gazetteer(_path(cfg.gazetteer, base_dir)), snap_m=cfg.location_snap_m),
        PiiFlagger(),
        UrgencyAssessor(tax),
    ]
    if cfg.linking.enabled:
        ln = cfg.linking
        chain.append(Linker(radius_m=ln.radius_m, window_days=ln.window / 86400,
                            related_threshold=ln.related_threshold,
                            duplicate_threshold=ln.duplicate_threshold,
                            duplicate_window_days=ln.duplicate_window / 86400,
                            urgent_after=ln.urgent_after, candidates=ln.candidates,
                            repeat_threshold=ln.repeat_threshold))
    d = cfg.deadlines
    hh, mm = (int(x) for x in d.same_day_cutoff.split(":"))
    calendar = WorkCalendar.load(_path(cfg.calendar_override, base_dir) or DEFAULT_OVERRIDE,
                                 weekday_fallback=d.calendar_fallback == "weekdays")
    chain.append(DeadlineSetter(
        calendar, timezone, respond_hours=d.respond_hours, resolve_days=d.resolve_days,
        per_category={k: v.model_dump(exclude_none=True) for k, v in d.per_category.items()},
        major=tax.major, simple_kinds=d.simple_kinds, same_day_cutoff=dt.time(hh, mm), tax=tax))
    return chain
