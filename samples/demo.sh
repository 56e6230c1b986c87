#!/usr/bin/env bash
# `make demo`: the whole chain on the bundled samples, embedded default (SQLite + blob folder).
# Safe to run again: the same inputs are recognised and nothing new is delivered.
set -euo pipefail
cd "$(dirname "$0")/.."
HUB=.venv/bin/feedback-hub
CFG=samples/feedback-hub.yaml
export FEEDBACK_HUB_CONFIG=$CFG

mkdir -p .demo/inbox/forward .demo/out
# upstream platform exports (jsonfile connector): dropped into the inbox as a platform would
cp samples/forward/* .demo/inbox/forward/

# complaints mailbox: a throwaway Dovecot (loopback, free port, its own CA) loaded with samples/mail
cleanup() {
  .venv/bin/python -m connectors.email.demo_server stop --state .demo/mail || true
  .venv/bin/python -m connectors.iot.demo_replay stop --state .demo/mqtt || true
}
trap cleanup EXIT
eval "$(.venv/bin/python -m connectors.email.demo_server start --state .demo/mail --load samples/mail)"
export IMAP_DEMO=true

# streetlights (mqtt): a throwaway Mosquitto on a free port; the recorded reports are replayed
# through it after the hub's persistent session exists, as a field network would deliver them
eval "$(.venv/bin/python -m connectors.iot.demo_replay start --state .demo/mqtt)"
export MQTT_DEMO=true
$HUB run --once --connector streetlights --stage ingest >/dev/null
.venv/bin/python -m connectors.iot.demo_replay replay --port "$MQTT_PORT" samples/iot/reports.jsonl

echo "== run --once"
$HUB run --once
echo
echo "== cases delivered"
$HUB cases list --limit 200
echo
echo "== status"
$HUB status
echo
echo "== report"
$HUB report --since 2020-01-01 --chart .demo/out/report.html --csv .demo/out/report
echo
echo "Delivered cases are in .demo/out/cases.jsonl ($(wc -l < .demo/out/cases.jsonl) lines)."
echo "Try: $HUB -c $CFG cases show <reference>   |   $HUB -c $CFG dead-letters list"
