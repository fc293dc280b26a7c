#!/usr/bin/env bash
# Capacity per SFT core: the release `sft` with 1 and then 2 media workers,
# driven by `sft-load --engine str0m` (light participants, everyone
# publishing simulcast) in the shapes of docs/performance.md, then more and
# more 4-person calls until loss first exceeds 1 %. Prints Markdown rows.
#
#   benches/capacity.sh [seconds per run, default 15]
#
# Everything stays on 127.0.0.1. The SFT and the load process share this
# machine's cores, so read the SFT's CPU next to the load it carried.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN="${1:-15}"
SIGNALLING=127.0.0.1:18785
METRICS=127.0.0.1:18790
cargo build --release --quiet --bin sft --bin sft-load

sft_pid=""
stop_sft() {
    if [ -n "$sft_pid" ]; then
        kill "$sft_pid" 2>/dev/null || true
        wait "$sft_pid" 2>/dev/null || true
        sft_pid=""
    fi
}
trap stop_sft EXIT

start_sft() { # workers
    SFT_MEDIA__WORKERS="$1" SFT_MEDIA__LISTEN=127.0.0.1:28700 SFT_SIGNALLING__LISTEN=$SIGNALLING \
        SFT_METRICS__LISTEN=$METRICS SFT_FEDERATION__LISTEN=127.0.0.1:18743 \
        SFT_FEDERATION__RELAY_LISTEN=127.0.0.1:18743 SFT_LIMITS__EXEMPT_LOOPBACK=true \
        target/release/sft >/tmp/sft-capacity.log 2>&1 &
    sft_pid=$!
    for _ in $(seq 50); do
        curl -sf "http://$METRICS/readyz" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "the SFT did not start: $(cat /tmp/sft-capacity.log)" >&2
    exit 1
}

forwarded() {
    curl -s "http://$METRICS/metrics" | awk '/^sft_rtp_packets_forwarded_total/ { sum += $2 } END { print sum + 0 }'
}

# One run: prints a Markdown row; returns 1 when loss exceeded 1 %.
run() { # workers conferences participants
    local before after json
    before=$(forwarded)
    json=$(/usr/bin/time -f "%U %S %e" -o /tmp/sft-load-time.txt target/release/sft-load --engine str0m --sft "http://$SIGNALLING" --conferences "$2" \
        --participants "$3" --simulcast --video-kbps 300 --duration "$SECONDS_PER_RUN" --ramp 5 \
        --sft-pid "$sft_pid" --json --max-loss 100 || true)
    after=$(forwarded)
    python3 - "$1" "$2" "$3" "$before" "$after" "$json" "$(cat /tmp/sft-load-time.txt)" <<'EOF'
import json, sys
workers, conferences, participants, before, after, text, load_time = sys.argv[1:8]
user, system, elapsed = map(float, load_time.split()[-3:])
load_cpu = (user + system) / elapsed
report = json.loads(text)
usage = report["sft_usage"][0]
cpu = usage["cpu_percent"] / 100
window = report["window_seconds"]
# Forwarded over the whole run (joins included) is what the SFT counted;
# the window's rate is what the peers received in it.
received_per_second = report["packets_received"] / window
peers = report["joined"]
per_core = received_per_second / cpu if cpu else 0
print(f"| {workers} | {conferences} × {participants} | {peers} / {report['peers']} "
      f"| {cpu * 100:.0f} % | {received_per_second:,.0f} | {per_core:,.0f} | {peers / cpu if cpu else 0:,.0f} "
      f"| {report['loss_percent']:.2f} % | {report['latency_ms']['p50']:.1f} / {report['latency_ms']['p99']:.1f} ms "
      f"| {usage['rss_bytes'] / 2**20:.0f} MiB | {load_cpu * 100:.0f} % |")
sys.exit(0 if report["loss_percent"] <= 1.0 and report["joined"] == report["peers"] else 1)
EOF
}

echo "| workers | shape | joined | SFT CPU (of one core) | packets/s received | per SFT core-second | participants per core | loss | e2e p50 / p99 | SFT RSS | sft-load CPU (whole run) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for workers in 1 2; do
    for shape in "1 20" "5 10" "20 4"; do
        start_sft "$workers"
        run "$workers" $shape || true
        stop_sft
    done
done
echo
echo "Growing 4-person calls until loss first exceeds 1 %:"
for workers in 1 2; do
    for conferences in 20 25 30 35 40 50 60 80; do
        start_sft "$workers"
        if ! run "$workers" "$conferences" 4; then
            stop_sft
            break
        fi
        stop_sft
    done
done
