"""Look up an implementation by its config ``type`` in a table of import paths."""

from __future__ import annotations

import importlib
from typing import Any


def load_type(table: dict[str, str], kind: str, type_name: Any) -> Any:
    """Import the class registered for ``type_name`` in ``table`` (``"module:Class"``).

    Raises:
        KeyError: with a message listing the known types.
    """
    if not isinstance(type_name, str) or type_name not in table:
        known = ", ".join(sorted(table))
        raise KeyError(f"unknown {kind} type {type_name!r} (known: {known})")
    module, _, attr = table[type_name].partition(":")
    return getattr(importlib.import_module(module), attr)
