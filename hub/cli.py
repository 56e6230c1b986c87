"""The ``feedback-hub`` command line.

Exit codes: 0 success; 1 failure; 2 usage or configuration error; 3 the run finished but at
least one connector failed (see ``status``); 4 the named case or dead letter does not exist.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hub.access_code import access_code
from hub.config import ConfigError, HubConfig, load_config
from hub.logsetup import redact, setup_logging

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_PARTIAL, EXIT_NOT_FOUND = 0, 1, 2, 3, 4

def _console(stderr: bool = False) -> Console:
    # piped output (cron mail, CI logs) gets a wide table instead of rich's 80 columns
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal or os.environ.get("COLUMNS") else 160
    return Console(stderr=stderr, width=width)


out = _console()
err = _console(stderr=True)
logger = logging.getLogger("hub.cli")


class Ctx:
    """Shared CLI state: the config path and a lazily built Hub."""

    def __init__(self, config_path: str | None, log_level: str | None, log_format: str | None):
        self.config_path = config_path
        self.log_level = log_level
        self.log_format = log_format
        self._config: HubConfig | None = None
        self._hub: Any = None

    @property
    def config(self) -> HubConfig:
        """The validated config (exits with code 2 and every error when it is invalid)."""
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                err.print(f"[red]configuration error[/red] in {exc.path or 'config'}:",
                          highlight=False)
                for line in exc.errors:
                    err.print(f"  {line}", markup=False, highlight=False)
                raise SystemExit(EXIT_CONFIG) from exc
            setup_logging(self.log_level or self._config.logging.level,
                          self.log_format or self._config.logging.format)
        return self._config

    @property
    def hub(self) -> Any:
        """The runtime, built on first use."""
        if self._hub is None:
            from hub.pipeline import Hub

            self._hub = Hub(self.config)
        return self._hub

    def close(self) -> None:
        """Close the runtime if it was built."""
        if self._hub is not None:
            self._hub.close()


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-c", "--config", "config_path", envvar="FEEDBACK_HUB_CONFIG",
              type=click.Path(dir_okay=False), help="Config file [default: ./feedback-hub.yaml, "
              "or $FEEDBACK_HUB_CONFIG].")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
              help="Override logging.level.")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Override logging.format.")
@click.version_option(package_name="feedback-hub")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, log_level: str | None,
        log_format: str | None) -> None:
    """Feedback Hub: pull resident feedback from every channel, normalize it into one case
    schema, enrich it and deliver it exactly once downstream.

    \b
    Typical use:
      feedback-hub config check          validate feedback-hub.yaml
      feedback-hub run --once            ingest, process and deliver once (cron)
      feedback-hub status                connectors, sinks, backlog
      feedback-hub dead-letters list     what failed, and why
    """
    setup_logging(log_level or "WARNING", log_format or "text")
    ctx.obj = Ctx(config_path, log_level, log_format)
    ctx.call_on_close(ctx.obj.close)


def _progress() -> tuple[Any, Any]:
    if not err.is_terminal:
        return None, None
    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=True)
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int | None) -> None:
        if stage not in tasks:
            tasks[stage] = prog.add_task(stage, total=total)
        prog.update(tasks[stage], completed=done, total=total)

    return prog, update


# ------------------------------------------------------------------------------ run
@cli.command()
@click.option("--once", is_flag=True, help="Run one pass and exit (cron style).")
@click.option("--connector", "connectors", multiple=True, metavar="NAME",
              help="Only ingest from this connector (repeatable).")
@click.option("--stage", "stages", multiple=True,
              type=click.Choice(["ingest", "process", "deliver", "status"]),
              help="Only run these stages (repeatable) [default: all]; status pulls case "
                   "status back from Open311 sinks.")
@click.option("--interval", default=60.0, show_default=True,
              help="Seconds between passes without --once.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_ctx
def run(c: Ctx, once: bool, connectors: tuple[str, ...], stages: tuple[str, ...],
        interval: float, as_json: bool) -> None:
    """Ingest, process and deliver: once with --once, else every --interval seconds."""
    from hub.pipeline import ALL_STAGES, run_once

    hub = c.hub
    for name in connectors:
        try:
            c.config.connector(name)
        except KeyError:
            known = ", ".join(x.name for x in c.config.connectors) or "none"
            err.print(f"no connector named {name!r} (configured: {known})", markup=False)
            raise SystemExit(EXIT_CONFIG) from None
    while True:
        prog, update = _progress()
        if prog:
            with prog:
                summary = run_once(hub, connectors or None, stages or ALL_STAGES, update)
        else:
            summary = run_once(hub, connectors or None, stages or ALL_STAGES)
        print_summary(summary, hub, as_json)
        if once:
            raise SystemExit(EXIT_PARTIAL if summary.connector_errors else EXIT_OK)
        time.sleep(interval)


@cli.command()
@click.option("--poll-interval", default=30.0, show_default=True,
              help="Seconds between polls of connectors that cannot push (IDLE/MQTT push).")
@click.option("--tick", default=5.0, show_default=True,
              help="Seconds between process/deliver passes when nothing arrives.")
@click.option("--status-interval", default=300.0, show_default=True,
              help="Seconds between pulls of case status from Open311 sinks.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on this port (worker counters and the store's "
                   "connector, outbox, case and dead-letter figures).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address the metrics port listens on.")
@pass_ctx
def listen(c: Ctx, poll_interval: float, tick: float, status_interval: float,
           metrics_port: int | None, metrics_host: str) -> None:
    """Run continuously: MQTT subscriptions, IMAP IDLE, polls and the delivery loop."""
    from hub.listen import run_forever
    from outbox.status_sync import PeriodicStatusSync

    raise SystemExit(run_forever(c.config, poll_interval=poll_interval, tick=tick,
                                 extra_stages=[PeriodicStatusSync(status_interval)],
                                 metrics_port=metrics_port, metrics_host=metrics_host))


def summary_dict(summary: Any, hub: Any) -> dict[str, Any]:
    """The run summary as plain data."""
    dead = hub.store.dead_letters("new", limit=1000)
    return {
        "ingest": [{"source": s.source, "inserted": s.inserted, "duplicates": s.duplicates,
                    "dead": s.dead, "error": s.error} for s in summary.ingest],
        "process": {"records": summary.process.seen, "cases_new": summary.process.cases_new,
                    "updates": summary.process.updates, "ignored": summary.process.ignored,
                    "failed": summary.process.failed, "kinds": dict(summary.process.kinds),
                    "ignored_reasons": dict(summary.process.ignored_reasons),
                    "busy": summary.process.busy},
        "deliver": {"delivered": summary.deliver.delivered, "retried": summary.deliver.retried,
                    "dead": summary.deliver.dead, "by_sink": dict(summary.deliver.by_sink)},
        "status_sync": None if summary.status is None else {
            "polled": summary.status.polled, "changes": summary.status.changes,
            "errors": [redact(e) for e in summary.status.errors]},
        "dead_letters_open": [{"id": d["id"], "stage": d["stage"], "source": d["source"],
                               "reason": redact(d["reason"])} for d in dead],
    }


def print_summary(summary: Any, hub: Any, as_json: bool = False) -> None:
    """Print what a run did."""
    data = summary_dict(summary, hub)
    if as_json:
        out.print_json(json.dumps(data, ensure_ascii=False))
        return
    t = Table(title="Records in", title_justify="left")
    for col in ("connector", "new", "duplicates", "dead letters", "error"):
        t.add_column(col)
    for s in data["ingest"]:
        t.add_row(s["source"], str(s["inserted"]), str(s["duplicates"]), str(s["dead"]),
                  redact(s["error"] or ""))
    if data["ingest"]:
        out.print(t)
    p = data["process"]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(p["kinds"].items())) or "-"
    if p["busy"]:
        out.print(f"Process stage skipped: another worker ({p['busy']}) is processing; it "
                  "handles the pending records", markup=False)
    else:
        out.print(f"Processed {p['records']} record(s): {p['cases_new']} new case(s) "
                  f"({kinds}), {p['updates']} update(s), {p['ignored']} ignored, "
                  f"{p['failed']} failed")
    d = data["deliver"]
    sinks = ", ".join(f"{k} {v}" for k, v in sorted(d["by_sink"].items())) or "-"
    out.print(f"Delivered {d['delivered']} ({sinks}), {d['retried']} to retry, "
              f"{d['dead']} dead-lettered")
    st = data["status_sync"]
    if st and (st["polled"] or st["errors"]):
        out.print(f"Status from downstream: {st['polled']} case(s) polled, {st['changes']} "
                  f"change(s)" + (f", errors: {'; '.join(st['errors'])}" if st["errors"] else ""))
    if data["dead_letters_open"]:
        t = Table(title=f"Open dead letters ({len(data['dead_letters_open'])})",
                  title_justify="left")
        for col in ("id", "stage", "source", "reason"):
            t.add_column(col, overflow="fold")
        for dl in data["dead_letters_open"]:
            t.add_row(str(dl["id"]), dl["stage"], dl["source"] or "", dl["reason"])
        out.print(t)


# ------------------------------------------------------------------------------ status
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status(c: Ctx, as_json: bool) -> None:
    """Per connector: last success, records, errors, checkpoint; per sink: backlog."""
    from hub.status import collect_status

    data = collect_status(c.hub)
    if as_json:
        out.print_json(json.dumps(data, ensure_ascii=False, default=str))
        return
    t = Table(title="Connectors", title_justify="left")
    for col in ("name", "type", "last success", "last error", "records", "dups", "errors",
                "pending", "checkpoint"):
        t.add_column(col, overflow="fold")
    for s in data["connectors"]:
        t.add_row(s["name"], s["type"], _when(s["last_success_at"]) or "never",
                  _when(s["last_error_at"]) + (f" {s['last_error']}" if s["last_error"] else ""),
                  str(s["records_total"]), str(s["duplicates_total"]), str(s["errors_total"]),
                  str(s["raw_pending"]), json.dumps(s["checkpoint"], ensure_ascii=False)
                  if s["checkpoint"] is not None else "-")
    out.print(t)
    t = Table(title="Sinks", title_justify="left")
    for col in ("name", "type", "pending", "in flight", "retrying", "delivered", "dead"):
        t.add_column(col)
    for s in data["sinks"]:
        t.add_row(s["name"], s["type"], *(str(s[k]) for k in ("pending", "in_flight", "retrying",
                                                               "delivered", "dead")))
    out.print(t)
    cs = data["cases"]
    by_status = ", ".join(f"{k} {v}" for k, v in cs["by_status"].items()) or "none"
    out.print(f"Cases: {cs['total']} ({by_status}); needs review {cs['needs_review']}; "
              f"open dead letters {data['dead_letters_open']}")


def _when(ts: str | None, tz: str | None = None) -> str:
    """A stored UTC time for people: local zone when given, to the second."""
    if not ts:
        return ""
    if tz:
        from zoneinfo import ZoneInfo

        from outbox.store.timefmt import parse_ts

        parsed = parse_ts(ts)
        if parsed is not None:
            return parsed.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S")
    return ts[:19].replace("T", " ")


# ------------------------------------------------------------------------------ cases
@cli.group()
def cases() -> None:
    """Look at cases and their timelines."""


@cases.command("list")
@click.option("--limit", default=50, show_default=True)
@click.option("--kind")
@click.option("--status", "status_")
@click.option("--channel")
@click.option("--category", "category_code")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def cases_list(c: Ctx, limit: int, kind: str | None, status_: str | None, channel: str | None,
               category_code: str | None, as_json: bool) -> None:
    """List recent cases, newest first."""
    rows = c.hub.store.list_cases(limit, kind=kind, status=status_, channel=channel,
                                  category_code=category_code)
    if as_json:
        out.print_json(json.dumps([{k: v for k, v in r.items() if k != "body"} | {
            "title": r["body"]["title"]} for r in rows], ensure_ascii=False))
        return
    t = Table(title=f"Cases ({len(rows)})", title_justify="left")
    for col in ("reference", "received", "channel", "kind", "category", "department", "urgency",
                "resolve by", "status", "title"):
        t.add_column(col, overflow="fold")
    tz = c.config.timezone
    for r in rows:
        b = r["body"]
        resolve_by = (b.get("deadlines") or {}).get("resolve_by")
        t.add_row(r["reference"], _when(r["received_at"], tz)[:16], r["channel"],
                  r["kind"], b["classification"].get("category_label") or
                  (r["category_code"] or "-"), r["department"] or "-", r["urgency"],
                  resolve_by[:16].replace("T", " ") if resolve_by else "-",
                  r["status"] + (" ⚑" if r["needs_review"] else ""), redact(b["title"])[:60])
    out.print(t)


@cases.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="The full case JSON and timeline.")
@pass_ctx
def cases_show(c: Ctx, ref: str, as_json: bool) -> None:
    """Show one case (by reference or case id) with its timeline and deliveries."""
    store = c.hub.store
    case = store.find_case(ref)
    if case is None:
        err.print(f"no case {ref}", markup=False)
        raise SystemExit(EXIT_NOT_FOUND)
    timeline = store.timeline(case.case_id)
    deliveries = store.deliveries(case.case_id)
    secret = c.config.server.progress_secret
    code = access_code(secret.get_secret_value(), case.reference) \
        if secret is not None and case.reference else None
    if as_json:
        doc = {"case": case.model_dump(mode="json"), "timeline": timeline,
               "deliveries": deliveries}
        if code:
            doc["access_code"] = code
        out.print_json(json.dumps(doc, ensure_ascii=False, default=str))
        return
    cl, u, dl = case.classification, case.urgency, case.deadlines
    lines = [
        f"[bold]{case.reference}[/bold]  {case.kind.value}  {case.title}",
        f"case id     {case.case_id}",
        f"origin      {case.origin.channel.value} / {case.origin.source} / "
        f"{case.origin.source_ref} (raw #{case.origin.raw_record_id})",
        f"received    {case.origin.received_at.isoformat()}",
        f"category    {cl.category_code or '-'} {cl.category_label or ''}  "
        f"department {cl.department or '-'}"
        + (f" (+{', '.join(cl.co_departments)})" if cl.co_departments else "")
        + f"  confidence {cl.confidence:.2f}",
        f"urgency     {u.level.value}" + (f" ({'; '.join(u.reasons)})" if u.reasons else ""),
        f"deadlines   respond by {dl.respond_by.isoformat() if dl.respond_by else '-'}, "
        f"resolve by {dl.resolve_by.isoformat() if dl.resolve_by else '-'}"
        + (f" [{dl.calendar}]" if dl.calendar else ""),
        f"location    {case.location.address or '-'} "
        f"{case.location.community or ''} ({case.location.source.value})",
        f"reporter    {redact(case.reporter.name or '-')} {redact(case.reporter.phone or '')} "
        f"{redact(case.reporter.email or '')}",
    ]
    if code:
        lines.append(f"access code {code}  (the resident's code for the progress page)")
    if case.review.needs_review:
        lines.append("review      " + "; ".join(f"{f.code}: {f.reason}"
                                                for f in case.review.flags))
    for line in lines:
        out.print(line, highlight=False)
    out.print("\n" + redact(case.description), markup=False, highlight=False)
    for a in case.attachments:
        out.print(f"attachment  {a.filename or a.sha256[:12]} {a.mime} {a.size} B", markup=False)
    t = Table(title="Timeline", title_justify="left")
    for col in ("at", "event", "detail"):
        t.add_column(col, overflow="fold")
    for ev in timeline:
        t.add_row(_when(ev["at"], c.config.timezone), ev["kind"], redact(ev["text"] or ""))
    out.print(t)
    t = Table(title="Deliveries", title_justify="left")
    for col in ("sink", "kind", "state", "attempts", "remote id", "last error"):
        t.add_column(col, overflow="fold")
    for d in deliveries:
        t.add_row(d["sink"], d["kind"], d["state"], str(d["attempts"]), d["remote_id"] or "-",
                  redact((d["last_error"] or {}).get("reason", "")))
    out.print(t)


# ------------------------------------------------------------------------------ dead letters
@cli.group("dead-letters")
def dead_letters() -> None:
    """Inspect and replay what failed."""


@dead_letters.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include replayed and discarded ones.")
@click.option("--stage", type=click.Choice(["ingest", "process", "deliver"]))
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def dl_list(c: Ctx, show_all: bool, stage: str | None, limit: int, as_json: bool) -> None:
    """List dead letters (open ones by default)."""
    rows = c.hub.store.dead_letters(None if show_all else "new", limit, stage)
    for r in rows:
        r["reason"] = redact(r["reason"])
    if as_json:
        out.print_json(json.dumps(rows, ensure_ascii=False, default=str))
        return
    t = Table(title=f"Dead letters ({len(rows)})", title_justify="left")
    for col in ("id", "when", "stage", "source", "ref", "state", "reason"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(str(r["id"]), r["created_at"][:19].replace("T", " "), r["stage"],
                  r["source"] or "", (r["source_ref"] or "")[:40], r["replay_state"], r["reason"])
    out.print(t)


@dead_letters.command("show")
@click.argument("dl_id", type=int)
@click.option("--bytes", "max_bytes", default=2000, show_default=True,
              help="How much of the raw input to preview.")
@pass_ctx
def dl_show(c: Ctx, dl_id: int, max_bytes: int) -> None:
    """Show a dead letter: reason, context and a preview of the raw input."""
    hub = c.hub
    dl = hub.store.dead_letter(dl_id)
    if dl is None:
        err.print(f"no dead letter {dl_id}")
        raise SystemExit(EXIT_NOT_FOUND)
    for key in ("id", "stage", "source", "source_ref", "created_at", "replay_state",
                "replayed_at", "replay_result", "raw_record_id", "outbox_id", "blob_sha256"):
        if dl.get(key) is not None:
            out.print(f"{key:14}{redact(str(dl[key]))}", markup=False, highlight=False)
    out.print(f"{'reason':14}{redact(dl['reason'])}", markup=False, highlight=False)
    if dl["detail"]:
        out.print(f"{'detail':14}{redact(json.dumps(dl['detail'], ensure_ascii=False))}",
                  markup=False, highlight=False)
    preview = None
    if dl["blob_sha256"] and hub.blobs.exists(dl["blob_sha256"]):
        preview = hub.blobs.read(dl["blob_sha256"], max_bytes)
        out.print(f"raw input ({hub.blobs.size(dl['blob_sha256'])} bytes):")
    elif dl["raw_record_id"]:
        raw = hub.store.get_raw(int(dl["raw_record_id"]))
        if raw is not None:
            preview = json.dumps(raw.record.payload, ensure_ascii=False, indent=2).encode()[
                :max_bytes]
            out.print("raw record payload:")
    if preview is not None:
        text = preview.decode("utf-8", errors="replace")
        out.print(redact(text), markup=False, highlight=False)


@dead_letters.command("replay")
@click.argument("dl_id", type=int, required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every open dead letter.")
@click.option("--stage", type=click.Choice(["ingest", "process", "deliver"]),
              help="With --all: only dead letters of this stage.")
@click.option("--payload", type=click.Path(exists=True, dir_okay=False),
              help="Corrected input: raw bytes (ingest) or record JSON (process).")
@click.option("--no-run", is_flag=True, help="Only re-queue; do not process and deliver now.")
@pass_ctx
def dl_replay(c: Ctx, dl_id: int | None, replay_all: bool, stage: str | None,
              payload: str | None, no_run: bool) -> None:
    """Re-queue a dead letter (or --all) and run it through the rest of the pipeline."""
    from hub.pipeline import deliver, process
    from hub.replay import ReplayError, replay

    if (dl_id is None) == (not replay_all):
        err.print("give a dead letter ID or --all")
        raise SystemExit(EXIT_CONFIG)
    if replay_all and payload:
        err.print("--payload replays one dead letter at a time")
        raise SystemExit(EXIT_CONFIG)
    hub = c.hub
    ids = [dl_id] if dl_id is not None else [r["id"] for r in reversed(hub.store.dead_letters(
        "new", limit=100_000, stage=stage))]
    corrected = Path(payload).read_bytes() if payload else None
    failures = 0
    for i in ids:
        try:
            outcome = replay(hub, int(i), corrected)
            out.print(f"dead letter {i}: {outcome.result}", markup=False)
        except ReplayError as exc:
            failures += 1
            err.print(f"dead letter {i}: {exc}", markup=False)
            if dl_id is not None and "no dead letter" in str(exc):
                raise SystemExit(EXIT_NOT_FOUND) from exc
    if not no_run and len(ids) > failures:
        p = process(hub)
        d = deliver(hub)
        out.print(f"then: {p.cases_new} new case(s), {p.failed} failed again; "
                  f"{d.delivered} delivered, {d.dead} dead-lettered")
    raise SystemExit(EXIT_FAIL if failures else EXIT_OK)


@dead_letters.command("discard")
@click.argument("dl_id", type=int)
@click.option("--reason", required=True, help="Why it is discarded (kept for the audit).")
@pass_ctx
def dl_discard(c: Ctx, dl_id: int, reason: str) -> None:
    """Close a dead letter without replaying it (spam, test data...)."""
    store = c.hub.store
    if store.dead_letter(dl_id) is None:
        err.print(f"no dead letter {dl_id}")
        raise SystemExit(EXIT_NOT_FOUND)
    store.mark_dead_letter(dl_id, "discarded", reason)
    out.print(f"dead letter {dl_id} discarded")


# ------------------------------------------------------------------------------ config, schema
@cli.group("config")
def config_group() -> None:
    """Check the configuration."""


@config_group.command("check")
@click.pass_obj
def config_check(c: Ctx) -> None:
    """Validate the config file; print every error with its key path (exit 2 on errors)."""
    cfg = c.config
    out.print(f"ok: {len(cfg.connectors)} connector(s), {len(cfg.sinks)} sink(s), "
              f"{len(cfg.routing)} routing rule(s); store {cfg.store.split('://')[0]}",
              markup=False)


@cli.command()
@click.option("--indent", default=2, show_default=True)
def schema(indent: int) -> None:
    """Print the Case JSON Schema (draft 2020-12)."""
    from normalizer.case import case_json_schema

    click.echo(json.dumps(case_json_schema(), ensure_ascii=False, indent=indent))


def _register_commands() -> None:
    from hub.report import report_command
    from hub.server.cli import serve_command

    cli.add_command(report_command)
    cli.add_command(serve_command)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="feedback-hub", standalone_mode=True)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
