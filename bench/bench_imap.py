"""P2: the IMAP connector's fetch + store + commit rate vs a raw imapclient FETCH loop.

One throwaway Dovecot (connectors/email/demo_server.py) serves the same mailbox to both:

* limit: a raw ``imapclient`` loop, ``UID FETCH <chunk> (BODY.PEEK[])`` over every UID, bodies
  discarded (read-only, so the mailbox is unchanged for the hub afterwards);
* hub: :func:`hub.pipeline.ingest` with the ``imap`` connector: SEARCH, sizes (the first 1000
  before fetching, the rest on the second connection meanwhile), bodies (the next batch's
  FETCH pipelined) and a batch's raw mails packed into the blob store and made durable (pack
  fsync + pack index commit; one batch ahead on a worker thread), one store commit per batch
  with the checkpoint, then MOVE to the processed folder (the default ``after_commit``;
  gathered per ``ack_every`` mails and sent on the second connection); the pass ends when the
  last MOVE is done.

Peak RSS with large attachments: the hub ingests mails of 20 MB (streamed in chunks by
partial FETCH) in a fresh process, compared with the same number of 1 MB mails.

The 10,000 mails are written straight into the Maildir, which is much faster than APPENDing
them, named as Dovecot's own delivery names them (``S=`` and ``W=`` sizes), then indexed and
taken from ``new/`` to ``cur/`` by one read-write SELECT before anything is timed. (Until
2026-12-03 the names had no ``W=`` and the SELECT was read-only: Dovecot then read every file
to answer ``RFC822.SIZE`` and the hub's first SELECT renamed 10,000 files, ~150 ms of work a
delivered mailbox does not cause and the read-only raw loop never paid.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import WORK, peak_rss_mib, write_results
from connectors.email.demo_server import Dovecot

N = int(os.environ.get("BENCH_IMAP_MAILS", "10000"))
BATCH = 200
BIG_COUNT = 10
BIG_SIZE = 20_000_000
SMALL_SIZE = 1_000_000


def _mails(n: int, size: int = 0) -> list[bytes]:
    from tests.email.mails import numbered

    return [numbered(i, size) for i in range(n)]


def fill_maildir(server: Dovecot, user: str, messages: list[bytes]) -> None:
    """Write messages into the user's Maildir ``new/`` (Dovecot indexes them on SELECT)."""
    server.drop_into_maildir(user, messages)
    c = server.client(user)
    try:
        # let Dovecot index them before timing anything, and take them from new/ to cur/ as a
        # read-write session does once: otherwise the hub's first (read-write) SELECT paid for
        # renaming every file, which the read-only raw loop never does
        c.select_folder("INBOX")
    finally:
        c.logout()


def raw_fetch_loop(server: Dovecot, user: str) -> tuple[int, float]:
    """The limit: fetch every body with a plain imapclient loop; returns (mails, seconds)."""
    c = server.client(user)
    try:
        started = time.perf_counter()
        c.select_folder("INBOX", readonly=True)
        uids = sorted(c.search(["ALL"]))
        n = 0
        for i in range(0, len(uids), BATCH):
            for data in c.fetch(uids[i:i + BATCH], ["BODY.PEEK[]"]).values():
                n += 1 if data.get(b"BODY[]") else 0
        return n, time.perf_counter() - started
    finally:
        c.logout()


def raw_fetch_each(server: Dovecot, user: str) -> tuple[int, float]:
    """A second limit: one ``UID FETCH`` per message (how simple fetchers loop)."""
    c = server.client(user)
    try:
        started = time.perf_counter()
        c.select_folder("INBOX", readonly=True)
        n = 0
        for uid in sorted(c.search(["ALL"])):
            n += 1 if c.fetch([uid], ["BODY.PEEK[]"]).get(uid, {}).get(b"BODY[]") else 0
        return n, time.perf_counter() - started
    finally:
        c.logout()


def hub_config(folder: Path, server: Dovecot, user: str) -> Path:
    """A config: this mailbox → SQLite store in ``folder`` (no sinks needed for ingest)."""
    cfg = {"store": "sqlite:///hub.db", "blobs": "blobs", "logging": {"level": "WARNING"},
           "connectors": [{"name": "mailbox", "type": "imap", "host": "127.0.0.1",
                           "port": server.port, "tls": "none", "username": user,
                           "password": server.password, "batch_size": BATCH}]}
    path = folder / "feedback-hub.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def hub_ingest(cfg: Path) -> tuple[int, float]:
    """The hub: one ingest pass; returns (mails committed, seconds)."""
    from hub.config import load_config
    from hub.pipeline import Hub, ingest

    hub = Hub(load_config(cfg))
    try:
        hub.store.migrate() if hasattr(hub.store, "migrate") else None
        started = time.perf_counter()
        stats = ingest(hub, ["mailbox"])
        elapsed = time.perf_counter() - started
        if stats[0].error:
            raise RuntimeError(stats[0].error)
        return stats[0].inserted, elapsed
    finally:
        hub.close()


def vm_hwm_mib() -> float:
    """Peak RSS of this process image (VmHWM; unlike ru_maxrss it does not carry over the
    parent's peak across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mib()


def rss_phase(cfg: Path) -> None:
    """Child process: ingest, then print peak RSS as JSON."""
    n, secs = hub_ingest(cfg)
    print(json.dumps({"mails": n, "seconds": secs, "peak_rss_mib": vm_hwm_mib()}))


def _rss_child(cfg: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.bench_imap", "--rss-phase", str(cfg)],
                         capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run P2 and write bench/results/P2.json."""
    root = Path(tempfile.mkdtemp(prefix="fbhub-bench-imap-"))
    root.chmod(0o755)  # Dovecot's mail processes (dovecot user) must reach the Maildir
    work = WORK / "imap"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    load_before = os.getloadavg()[0]
    server = Dovecot(root / "dovecot").start()
    try:
        print(f"P2: writing {N} mails into the Maildir", flush=True)
        fill_maildir(server, "bench", _mails(N))
        raw_n, raw_s = raw_fetch_loop(server, "bench")
        each_n, each_s = raw_fetch_each(server, "bench")
        hub_dir = work / "rate"
        hub_dir.mkdir()
        hub_n, hub_s = hub_ingest(hub_config(hub_dir, server, "bench"))
        assert raw_n == hub_n == N, (raw_n, hub_n)
        raw_rate, hub_rate = raw_n / raw_s, hub_n / hub_s

        print("P2: large attachments", flush=True)
        fill_maildir(server, "small", _mails(BIG_COUNT, SMALL_SIZE * 3 // 4))
        fill_maildir(server, "big", _mails(BIG_COUNT, BIG_SIZE * 3 // 4))
        rss = {}
        for user in ("small", "big"):
            d = work / user
            d.mkdir()
            rss[user] = _rss_child(hub_config(d, server, user))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    rows = [
        {"measure": f"mails fetched, stored and committed ({N} small mails, batches of "
                    f"{BATCH}, MOVE after commit)",
         "value": hub_rate, "unit": "mails/s", "limit": raw_rate,
         "ratio": hub_rate / raw_rate, "goal": "≥0.6× raw imapclient FETCH loop"},
        {"measure": f"same hub run vs a raw loop of one UID FETCH per mail ({N} mails)",
         "value": hub_rate, "unit": "mails/s", "limit": each_n / each_s,
         "ratio": hub_rate / (each_n / each_s), "goal": "≥0.6×"},
        {"measure": f"peak RSS ingesting {BIG_COUNT} mails of {BIG_SIZE // 1_000_000} MB",
         "value": rss["big"]["peak_rss_mib"], "unit": "MiB",
         "limit": rss["small"]["peak_rss_mib"],
         "ratio": rss["big"]["peak_rss_mib"] / rss["small"]["peak_rss_mib"],
         "goal": f"flat (limit: {BIG_COUNT} mails of {SMALL_SIZE // 1_000_000} MB)"},
    ]
    notes = (f"Raw loop: imapclient UID FETCH BODY.PEEK[] in chunks of {BATCH}, {raw_n} mails "
             f"in {raw_s:.2f}s; one FETCH per mail: {each_n} in {each_s:.2f}s. "
             f"Hub: ingest() {hub_n} mails in {hub_s:.2f}s, until the last MOVE is done: "
             f"SELECT, SEARCH, the first 1000 sizes (the rest in chunks on the second "
             f"connection meanwhile), then per batch the bodies fetched (the next batch's FETCH "
             f"sent before this one's response is read) and appended to one pack file made "
             f"durable by one fsync + one pack-index commit (on a worker thread, one batch "
             f"ahead), one SQLite commit per batch (one multi-row INSERT), MOVE per 1000 mails "
             f"(merged while one runs; per batch for the last 1000) on the second connection, "
             f"re-SELECTing each time; UID sets sent as ranges of consecutive UIDs. The bulk "
             f"responses (sizes, bodies, MOVE, EXPUNGE) are read "
             f"from imaplib's socket file with one regular expression per mail; other lines go "
             f"through imaplib and IMAPClient. Large mails are fetched in 1 MiB partial "
             f"FETCHes straight into blob files. The mailbox is filled as Dovecot delivers "
             f"(W= sizes in the file names, taken to cur/ before timing; see the module "
             f"docstring). Where the time goes (2026-12-03, quiet machine, /proc CPU times): "
             f"the hub process uses ~30 us CPU per mail (main thread ~13: records + SQLite "
             f"commit; fetch worker ~10: reading bodies, hashing, pack + index; second "
             f"connection ~4: sizes, MOVE), the raw loop ~23; Dovecot ~41 us per mail during "
             f"the hub's run (MOVE ~25-30 of it, each MOVE's SELECT ~7 ms) against ~9 during the "
             f"raw loop, so the hub's run keeps about 1.5 of the 2 cores busy. Measured "
             f"2026-12-03 afternoon (machine shared, load 0.9-1.8, every figure ~1.6x slower "
             f"than quiet): Dovecot spent ~100 us per mail in the hub's run against ~22 in the "
             f"raw loop; MOVEing 10,000 mails costs its process 0.5-0.54 s of CPU as one MOVE, "
             f"0.71-0.76 s as 10 (SELECT + MOVE of 1000 each) and 1.3-1.6 s as 50, so ~20 ms "
             f"per extra MOVE (its SELECT and the Maildir rescans of a 10,000-file cur/: "
             f"link, rename and unlink per mail otherwise); the MOVEs run back to back from "
             f"the first 1000 committed mails to the end of the pass, which is why it ends "
             f"~0.2 s after the last body is fetched there. In the hub process the pack index "
             f"commit costs ~10 us CPU per mail (random sha256 keys: each 200-row commit "
             f"writes ~150 pages of WAL; smaller pages or rarer checkpoints cost more) and "
             f"the store commit ~11-13 us. Tried, not kept: ack_every 200 (first MOVE after "
             f"the first batch; 4 runs each, ratio 0.51-0.61 vs 0.47-0.54 with 1000: noise, "
             f"more MOVEs at ~20 ms each), Dovecot maildir_very_dirty_syncs = yes (halves the "
             f"cost per extra MOVE, hub 0.91-0.98 s vs 1.04-1.09 s, but it favours the hub's "
             f"writes only and the raw loop got slower in the same runs: not used). Load average "
             f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after; the machine is shared "
             f"with other jobs and a neighbour's run moves the ratio by 0.1 or more.")
    write_results("P2", "IMAP connector: fetch, store, commit", rows, notes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rss-phase", default=None)
    args = parser.parse_args()
    if args.rss_phase:
        rss_phase(Path(args.rss_phase))
    else:
        main()
