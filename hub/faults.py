"""Crash points for recovery tests: ``FEEDBACK_HUB_CRASH_AT=name[:n]`` kills the process.

The process is killed with SIGKILL (no cleanup, no flush) the n-th time (default first) it
passes the named point, which is how the tests prove that a crash at that exact moment loses
nothing and duplicates nothing. Unset in production: the check is one dict lookup.
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Die here if the environment asks for a crash at ``name``."""
    spec = os.environ.get("FEEDBACK_HUB_CRASH_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
