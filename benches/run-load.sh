#!/usr/bin/env bash
# Re-runs the load figures of BENCHMARKS.md against release builds, over loopback.
#
#   benches/run-load.sh                     # every scenario, about 20 minutes
#   benches/run-load.sh sizes handshakes    # some of them
#   SIZES="1000 10000" DURATION=5 benches/run-load.sh capacity
#
# Scenarios:
#   sizes        fan-out at 20 NOTIFY/s to N sockets on one channel: RSS idle/connected/end,
#                latency, losses (targets 1 and 2)
#   capacity     fan-out rate sweep at N sockets, 25k to 1M deliveries/s, stops at the
#                first step with a loss; p99 per step (target 3)
#   channels     N sockets each on its own channel: connect time, latency (target 4)
#   handshakes   new authenticated sockets per second (target 5)
#   passthrough  wrk, 64 keep-alive connections, bare inner service vs through the layer,
#                alternated ROUNDS times (target 6)
#   write        socket messages -> NOTIFY vs pgbench `select pg_notify(...)`, same number
#                of database connections (target 7)
#
# Each loadgen run starts its own server (target/release/pgws, configured by
# PGWS_* variables) and stops it; every run is bounded by loadgen's --duration and
# --deadline, every wrk run by -d. Logs go to $OUT (default target/load/<time>).
# Needs PostgreSQL (PGWS_DB_URI, default postgres://postgres@127.0.0.1:5432/postgres);
# wrk and pgbench come from Debian's wrk and postgresql-client packages.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The server and the load generator each hold one descriptor per socket. Raise the soft
# limit as far as the hard one allows (65536 where permitted); the spawned server
# inherits it. Where the hard limit is lower (20000 in some containers), the sizes
# must stay under it: 19900 stands for 20k there.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "RLIMIT_NOFILE: $(ulimit -n)  commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src examples || echo ' (modified)')"

SIZES=${SIZES:-"1000 5000 10000 19900"}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-3900}
# NICE=-10 gives the server, loadgen, wrk and pgbench priority over other work on a
# shared machine (PostgreSQL keeps its own); 0 on a quiet one.
NICE=${NICE:-0}
OUT=${OUT:-target/load/$(date -u +%Y%m%d-%H%M%S)}
export PGWS_JWT_SECRET=${PGWS_JWT_SECRET:-reallyreallyreallyreallyverysafe}
export PGWS_DB_URI=${PGWS_DB_URI:-postgres://postgres@127.0.0.1:5432/postgres}
export PGWS_MAX_SOCKETS=${PGWS_MAX_SOCKETS:-100000}
export PGWS_POOL_SIZE=${PGWS_POOL_SIZE:-10}
mkdir -p "$OUT"

cargo build --release --features server --bin pgws --example loadgen --example passthrough
LOADGEN=(nice -n "$NICE" target/release/examples/loadgen)
SERVER=${SERVER:-target/release/pgws}
# Handshakes in flight while connecting; over 128 the server's listen backlog (mio's
# default) overflows and some connects wait for a 1 s SYN retransmission.
CONCURRENCY=${CONCURRENCY:-256}
COMMON=(--spawn-server "$SERVER" --addr "127.0.0.1:$PORT" --deadline 400 --concurrency "$CONCURRENCY")

# Runs a command with its output on the terminal and in $OUT/$1.log.
run() {
  local name=$1
  shift
  echo "==> $name: $*" | tee -a "$OUT/$name.log"
  "$@" 2>&1 | tee -a "$OUT/$name.log"
}

scenario_sizes() {
  for n in $SIZES; do
    run "sizes-$n" "${LOADGEN[@]}" fanout --sockets "$n" --rates 20 --duration "$DURATION" --grace 10 "${COMMON[@]}"
  done
}

scenario_capacity() {
  for n in $SIZES; do
    # Notification rates for 25k..1M deliveries/s at this size; the sweep stops at the
    # first step that loses a delivery (p99 is reported per step: the target's
    # capacity is the highest step with nothing missing and p99 under 100 ms).
    local rates
    rates=$(awk -v n="$n" 'BEGIN { s = ""; c = split("25000 50000 100000 200000 300000 400000 500000 600000 800000 1000000", d, " ");
      for (i = 1; i <= c; i++) { r = d[i] / n; s = s (i > 1 ? "," : "") r } print s }')
    run "capacity-$n" "${LOADGEN[@]}" fanout --sockets "$n" --rates "$rates" --duration 5 \
      --grace 10 --stop-on-fail --p99-limit 1000000 "${COMMON[@]}"
  done
}

scenario_channels() {
  for n in $SIZES; do
    run "channels-$n" "${LOADGEN[@]}" channels --sockets "$n" --rates 1000 --duration "$DURATION" "${COMMON[@]}"
  done
}

scenario_handshakes() {
  for w in 16 64 256; do
    run "handshakes-$w" "${LOADGEN[@]}" handshakes --workers "$w" --duration "$DURATION" "${COMMON[@]}"
  done
}

scenario_write() {
  for s in 10 100 1000; do
    run "write-$s" "${LOADGEN[@]}" publish --sockets "$s" --window 4 --pool "$PGWS_POOL_SIZE" \
      --pgbench --duration "$DURATION" "${COMMON[@]}"
  done
}

scenario_passthrough() {
  command -v wrk >/dev/null || { echo "passthrough: wrk is missing (apt-get install wrk)"; return 1; }
  local bare_port=$((PORT + 1)) layer_port=$((PORT + 2)) log="$OUT/passthrough.log"
  nice -n "$NICE" target/release/examples/passthrough bare "127.0.0.1:$bare_port" >/dev/null &
  local bare_pid=$!
  nice -n "$NICE" target/release/examples/passthrough layer "127.0.0.1:$layer_port" >/dev/null &
  local layer_pid=$!
  # shellcheck disable=SC2064
  trap "kill $bare_pid $layer_pid 2>/dev/null || true" RETURN
  sleep 1
  local bare=() layer=()
  for round in $(seq "$ROUNDS"); do
    for which in bare layer; do
      local port=$bare_port
      [ "$which" = layer ] && port=$layer_port
      echo "==> passthrough round $round $which: wrk -t2 -c64 -d${DURATION}s" | tee -a "$log"
      local rps
      rps=$(nice -n "$NICE" wrk -t2 -c64 -d"${DURATION}s" "http://127.0.0.1:$port/" | tee -a "$log" |
        awk '/Requests\/sec/ { print $2 }')
      if [ "$which" = bare ]; then bare+=("$rps"); else layer+=("$rps"); fi
    done
  done
  local median_bare median_layer
  median_bare=$(printf '%s\n' "${bare[@]}" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
  median_layer=$(printf '%s\n' "${layer[@]}" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
  echo "  RESULT passthrough bare=${bare[*]} layer=${layer[*]} median_bare=$median_bare median_layer=$median_layer ratio=$(awk -v a="$median_layer" -v b="$median_bare" 'BEGIN { printf "%.3f", a / b }')" | tee -a "$log"
}

scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(sizes capacity channels handshakes passthrough write)
for s in "${scenarios[@]}"; do
  "scenario_$s"
done
echo "logs: $OUT"
grep -h "RESULT\|RSS per socket\|^connect:" "$OUT"/*.log || true
