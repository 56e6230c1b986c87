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


def test_listen_serves_prometheus_metrics(tmp_path: Path) -> None:
    import urllib.request

    from tests.conftest import free_port

    cfg = write_config(tmp_path)
    out = tmp_path / "out" / "cases.jsonl"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "-c", str(cfg), "listen",
                             "--poll-interval", "0.3", "--tick", "0.3", "--metrics-port",
                             str(port)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()
        except OSError:
            return ""

    try:
        (tmp_path / "inbox" / "a.ndjson").write_text(
            '{"id": "L1", "title": "路灯不亮", "content": "幸福路路灯不亮"}\n'
            '{"id": "L2", "title": "积水", "content": "和平街积水"}\n'
            "{not json\n", encoding="utf-8")
        assert wait_for(lambda: len(jsonl_lines(out)) == 2), proc.stderr
        # this worker's counters, and the store's figures every worker shares
        want = ['feedback_hub_worker_records_ingested_total{connector="city-app"} 2.0',
                'feedback_hub_worker_delivered_total{sink="case-file"} 2.0',
                'feedback_hub_worker_cases_created_total{kind="complaint"}',
                'feedback_hub_connector_records_total{connector="city-app"} 2.0',
                'feedback_hub_outbox_rows{sink="case-file",state="delivered"} 2.0',
                'feedback_hub_connector_last_success_timestamp_seconds{connector="city-app"}',
                'feedback_hub_worker_pass_seconds_count{stage="deliver"}']
        assert wait_for(lambda: all(w in scrape() for w in want)), scrape()
        text = scrape()
        assert 'feedback_hub_worker_ingest_dead_letters_total{connector="city-app"} 1.0' in text
        assert "feedback_hub_dead_letters_open 1.0" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
