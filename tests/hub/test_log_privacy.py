"""Logs never carry secrets, and phone / ID numbers are masked in them."""

from __future__ import annotations

import io
import logging

from hub.logsetup import PrivacyFilter, TextFormatter, register_secrets


def test_log_lines_mask_pii_and_redact_secrets() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(PrivacyFilter())
    handler.setFormatter(TextFormatter())
    log = logging.getLogger("test.privacy")
    log.addHandler(handler)
    log.propagate = False
    register_secrets(["pa55word-XYZ"])
    try:
        log.warning("login failed for %s with pa55word-XYZ", "13812345678",
                    extra={"reporter": "身份证 11010519491231002X", "mail": "wang@example.com"})
        try:
            raise ValueError("token pa55word-XYZ rejected")
        except ValueError:
            log.exception("boom")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "pa55word-XYZ" not in text and "13812345678" not in text
    assert "11010519491231002X" not in text and "wang@example.com" not in text
    assert "138****5678" in text and "***" in text
