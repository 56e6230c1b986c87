"""``feedback-hub listen``: a long-running process picks up new files and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, jsonl_lines, wait_for, write_config


def test_listen_delivers_new_files_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    out = tmp_path / "out" / "cases.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "-c", str(cfg), "listen",
                             "--poll-interval", "0.3", "--tick", "0.3"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        (tmp_path / "inbox" / "a.ndjson").write_text(
            '{"id": "L1", "title": "路灯不亮", "content": "幸福路路灯不亮"}\n', encoding="utf-8")
        assert wait_for(lambda: len(jsonl_lines(out)) == 1), proc.stderr
        (tmp_path / "inbox" / "b.ndjson").write_text(
            '{"id": "L2", "title": "积水", "content": "和平街积水"}\n'
            '{"id": "L1", "title": "路灯不亮", "content": "幸福路路灯不亮"}\n', encoding="utf-8")
        assert wait_for(lambda: len(jsonl_lines(out)) == 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    titles = sorted(line["case"]["title"] for line in jsonl_lines(out))
    assert titles == ["积水", "路灯不亮"]
