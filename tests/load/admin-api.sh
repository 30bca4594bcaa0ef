#!/usr/bin/env bash
# Admin API benchmark on loopback (issue: "report p99 under 50 ms over 100 000 conversations
# with a filter; at least 10 000 action requests per second").
#
# Starts the daemon on the embedded default (a fresh store, the plugins built as in README.md),
# seeds 100 000 ongoing conversations through POST /v1/inbound/canonical (1 000 events per
# request), makes 500 of them active with an agent and has the supervisor monitor them, then
# measures with wrk (Debian package `wrk`):
#   1. GET /v1/conversations?state=active&queue=support-chat as a supervisor of `support`
#      (the report scans all 100 000 and returns the 500 that match);
#   2. POST /v1/conversations/{id}/whisper round robin over the monitored conversations (each
#      a durable command: record, timeline entry, outbox entry, answered after the commit).
# Prints one JSON line per measurement. Usage, from the repository root after
# `cargo build --release` and the plugin build:
#   bash tests/load/admin-api.sh [seconds per run, default 20]
set -euo pipefail

seconds="${1:-20}"
binary="${SWITCHBOARD_BIN:-target/release/switchboard}"
plugins="$(cd target/plugins/wasm32-wasip2/plugin && pwd)"
port="${SWITCHBOARD_BENCH_PORT:-18090}"
base="http://127.0.0.1:$port"
work="$(mktemp -d)"
trap 'kill "${daemon:-0}" 2>/dev/null || true; wait "${daemon:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

sed -e "s#\.\./target/plugins/wasm32-wasip2/plugin/#$plugins/#" \
    -e "s#path = \"./data\"#path = \"$work/data\"#" \
    -e "s#listen = \"127.0.0.1:8080\"#listen = \"127.0.0.1:$port\"#" \
    config/switchboard.toml > "$work/switchboard.toml"
config="$work/switchboard.toml"

# One load generator is one caller: lift the per-caller rate limit for the measurement.
SWITCHBOARD_SERVER__RATE_LIMIT=10000000 RUST_LOG=warn "$binary" serve --config "$config" \
  2> "$work/daemon.log" &
daemon=$!
for _ in $(seq 1 100); do curl -fs "$base/readyz" > /dev/null && break; sleep 0.2; done

ingest="$("$binary" token --config "$config" --sub bench-gateway --role ingest --ttl 2h)"
supervisor="$("$binary" token --config "$config" --sub sup-sam --role supervisor --team support --ttl 2h)"

echo "seeding 100 000 conversations" >&2
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
queues = [("support-chat", "web"), ("support-voice", "voice"), ("billing", "sms"), ("billing-disputes", "whatsapp")]
plugin = {"web": "web-chat", "voice": "voice-ari", "sms": "sms-twilio", "whatsapp": "whatsapp-cloud"}
for page in range(100):
    events = []
    for i in range(page * 1000, page * 1000 + 1000):
        queue, channel = queues[i % 4]
        events.append({"id": f"seed-{i}", "source": "canonical", "type": "started",
                       "conversation": {"plugin": plugin[channel], "key": f"bench-{i}"},
                       "channel": channel, "customer": {"id": f"cust-{i}", "name": f"Customer {i}"},
                       "subject": f"Order {i}", "queue": queue})
    with open(f"{work}/seed-{page:03}.json", "w") as out:
        json.dump(events, out)
# 500 support-chat conversations get an agent.
accepted = [{"id": f"accept-{i}", "source": "canonical", "type": "accepted",
             "conversation": {"plugin": "web-chat", "key": f"bench-{i}"},
             "agent": ["a-ana", "a-ben"][i % 2]} for i in range(0, 2000, 4)]
with open(f"{work}/accept.json", "w") as out:
    json.dump(accepted, out)
PY
for file in "$work"/seed-*.json "$work/accept.json"; do
  curl -fs -X POST "$base/v1/inbound/canonical" -H "Authorization: Bearer $ingest" \
    -H 'Content-Type: application/json' --data-binary "@$file" > /dev/null
done

curl -fs "$base/v1/conversations?state=active&queue=support-chat" \
  -H "Authorization: Bearer $supervisor" \
  | python3 -c 'import json,sys; ids=[c["id"] for c in json.load(sys.stdin)["conversations"]][:1000]; print("\n".join(ids))' \
  > "$work/ids.txt"
echo "monitoring $(wc -l < "$work/ids.txt") conversations" >&2
xargs -P 8 -I{} curl -fs -o /dev/null -X POST "$base/v1/conversations/{}/monitor" \
  -H "Authorization: Bearer $supervisor" < "$work/ids.txt"

export SWITCHBOARD_BENCH_TOKEN="$supervisor" SWITCHBOARD_BENCH_IDS="$work/ids.txt"
echo "report: GET /v1/conversations?state=active&queue=support-chat over 100 000, 8 connections" >&2
printf '{"measurement": "report", "rows": %s, "result": ' \
  "$(curl -fs "$base/v1/conversations?state=active&queue=support-chat" -H "Authorization: Bearer $supervisor" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')"
wrk -t2 -c8 -d"${seconds}s" --latency -s tests/load/report.lua "$base" | tail -1
echo "}"
echo "actions: POST /v1/conversations/{id}/whisper, 64 connections" >&2
printf '{"measurement": "whisper", "result": '
wrk -t2 -c64 -d"${seconds}s" --latency -s tests/load/whisper.lua "$base" | tail -1
echo "}"
