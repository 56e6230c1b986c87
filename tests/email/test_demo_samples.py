"""The demo path: ``python -m connectors.email.demo_server`` loads samples/mail into a fresh
Dovecot, and the hub turns them into cases, one update and two ignored mails.

Server: a Dovecot started by the demo server module itself (as ``make demo`` does).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path

import pytest

from connectors.email.demo_server import main as demo_server
from tests.conftest import SAMPLES
from tests.email.conftest import _ensure_dovecot
from tests.email.test_imap_pipeline import rows, run

pytestmark = pytest.mark.integration


def test_demo_server_loads_the_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    if problem := _ensure_dovecot():
        pytest.skip(problem)
    state = Path(tempfile.mkdtemp(prefix="fbhub-demo-"))
    state.chmod(0o755)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            assert demo_server(["start", "--state", str(state), "--load",
                                str(SAMPLES / "mail")]) == 0
        env = dict(line.removeprefix("export ").split("=", 1)
                   for line in out.getvalue().splitlines())
        assert set(env) == {"IMAP_HOST", "IMAP_PORT", "IMAP_TLS_PORT", "IMAP_USER",
                            "IMAP_PASSWORD", "IMAP_CA_FILE"}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        cfg = tmp_path / "feedback-hub.yaml"
        cfg.write_text(
            "store: sqlite:///hub.db\nblobs: blobs\nconnectors:\n"
            "  - {name: complaints-mailbox, type: imap, host: '${IMAP_HOST}', "
            "port: '${IMAP_PORT}', tls: starttls, ca_file: '${IMAP_CA_FILE}', "
            "username: '${IMAP_USER}', password: '${IMAP_PASSWORD}'}\n"
            "sinks:\n  - {name: case-file, type: jsonl, path: out/cases.jsonl}\n",
            encoding="utf-8")
        summary = run(cfg)
        assert summary.ingest[0].inserted == len(list((SAMPLES / "mail").glob("*.eml"))) == 13
        assert (summary.process.cases_new, summary.process.updates,
                summary.process.ignored, summary.process.failed) == (10, 1, 2, 0)
        received = rows(tmp_path, "SELECT received_at FROM raw_records ORDER BY id")[0][0]
        assert received.startswith("2026-11-24T01:15:00")  # INTERNALDATE = the mail's Date
    finally:
        demo_server(["stop", "--state", str(state)])
        shutil.rmtree(state, ignore_errors=True)
