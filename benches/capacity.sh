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
WORK=$(mktemp -d)
cargo build --release --quiet --bin sft --bin sft-load

sft_pid=""
stop_sft() {
    if [ -n "$sft_pid" ]; then
        # SIGINT: exit without the drain SIGTERM starts.
        kill -INT "$sft_pid" 2>/dev/null || true
        wait "$sft_pid" 2>/dev/null || true
        sft_pid=""
    fi
}
trap 'stop_sft; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

start_sft() { # workers
    SFT_MEDIA__WORKERS="$1" SFT_MEDIA__LISTEN=127.0.0.1:28700 SFT_SIGNALLING__LISTEN=$SIGNALLING \
        SFT_METRICS__LISTEN=$METRICS SFT_FEDERATION__LISTEN=127.0.0.1:18743 \
        SFT_FEDERATION__RELAY_LISTEN=127.0.0.1:18743 SFT_LIMITS__EXEMPT_LOOPBACK=true \
        target/release/sft >"$WORK/sft.log" 2>&1 &
    sft_pid=$!
    for _ in $(seq 50); do
        curl -sf "http://$METRICS/readyz" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "the SFT did not start: $(cat "$WORK/sft.log")" >&2
    exit 1
}

# One run: prints a Markdown row. Exit status 0: everyone joined and loss
# stayed within 1 %; 1: not so; 2: no report to read.
run() { # workers conferences participants
    /usr/bin/time -f "%U %S %e" -o "$WORK/time" target/release/sft-load --engine str0m \
        --sft "http://$SIGNALLING" --conferences "$2" --participants "$3" --simulcast --video-kbps 300 \
        --duration "$SECONDS_PER_RUN" --ramp 5 --sft-pid "$sft_pid" --json --max-loss 100 \
        >"$WORK/report.json" 2>"$WORK/load.log" || true
    python3 - "$1" "$2" "$3" "$WORK/report.json" "$WORK/time" <<'PY'
import json, sys
workers, conferences, participants, report_path, time_path = sys.argv[1:6]
try:
    report = json.load(open(report_path))
    user, system, elapsed = map(float, open(time_path).read().split()[-3:])
    usage = report["sft_usage"][0]
    cpu = usage["cpu_percent"] / 100
    latency = report["latency_ms"]
    e2e = f"{latency['p50']:.1f} / {latency['p99']:.1f} ms"
except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
    print(f"| {workers} | {conferences} × {participants} | no report: {error!r} |")
    sys.exit(2)
window = report["window_seconds"]
received_per_second = report["packets_received"] / window
peers = report["joined"]
print(f"| {workers} | {conferences} × {participants} | {peers} / {report['peers']} "
      f"| {cpu * 100:.0f} % | {received_per_second:,.0f} | {received_per_second / cpu:,.0f} | {peers / cpu:,.0f} "
      f"| {report['loss_percent']:.2f} % | {e2e} | {usage['rss_bytes'] / 2**20:.0f} MiB "
      f"| {(user + system) / elapsed * 100:.0f} % |")
sys.exit(0 if report["loss_percent"] <= 1.0 and peers == report["peers"] else 1)
PY
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
echo "Growing 4-person calls until loss first exceeds 1 % (or someone fails to join):"
for workers in 1 2; do
    for conferences in 20 25 30 35 40 50 60 80; do
        start_sft "$workers"
        status=0
        run "$workers" "$conferences" 4 || status=$?
        stop_sft
        [ "$status" -eq 0 ] || break
    done
done
