"""``feedback-hub serve``: upstream intake (signed JSON, Open311 facade), case progress, metrics.

The app is built by :func:`hub.server.app.create_app` from a :class:`~hub.config.HubConfig`.
"""

from __future__ import annotations

from hub.server.app import create_app

__all__ = ["create_app"]
