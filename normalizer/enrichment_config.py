"""Enrichment configuration and the enricher chain the process stage runs.

Owned by the enrichment work (issue 7); the pipeline only calls :func:`validate_enrichment`
and :func:`build_enrichers`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict

from hub.config_types import StrictModel
from normalizer.mapping import Enricher


class EnrichmentConfig(StrictModel):
    """The ``enrichment:`` section of feedback-hub.yaml."""

    model_config = ConfigDict(extra="forbid")


def validate_enrichment(data: dict[str, Any], *, base_dir: str = ".") -> EnrichmentConfig:
    """Validate the ``enrichment:`` section (raises pydantic ValidationError)."""
    return EnrichmentConfig.model_validate(data or {})


def build_enrichers(data: dict[str, Any], *, base_dir: str, timezone: str) -> list[Enricher]:
    """Build the ordered enricher chain from config."""
    validate_enrichment(data, base_dir=base_dir)
    return []
