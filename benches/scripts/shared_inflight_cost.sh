#!/usr/bin/env bash
# What sharing in-flight load through Valkey costs a kvpick-epp replica, by round interval: two
# replicas (8 endpoints each, the same pool) share through a real valkey-server for SECONDS; the
# script reports each setting's CPU time (user + system, from /proc) per second of wall time for
# replica A and for Valkey, against a replica with sharing off run alongside as the baseline.
# Usage: benches/scripts/shared_inflight_cost.sh [SECONDS] [INTERVAL...]
# KVPICK_EPP: the kvpick-epp binary (default: target/release/kvpick-epp).
set -euo pipefail
secs=${1:-20}; shift || true
intervals=("$@"); [ ${#intervals[@]} -gt 0 ] || intervals=(20ms 5ms 2ms 1ms)
epp=${KVPICK_EPP:-target/release/kvpick-epp}
[ -x "$epp" ] || { echo "no kvpick-epp at $epp (cargo build --release -p kvpick-epp)" >&2; exit 1; }
command -v valkey-server >/dev/null || { echo "valkey-server not installed (.ci/setup)" >&2; exit 1; }
dir=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
{
  echo "model: m"; echo "endpoints:"
  for i in $(seq 1 8); do echo "  - address: 127.0.0.1:$((41000 + i))"; done
} >"$dir/endpoints.yaml"
port=$((20000 + RANDOM % 20000))
valkey-server --port "$port" --save '' --appendonly no --dir "$dir" >"$dir/valkey.log" 2>&1 &
pids+=($!); vk=$!
for _ in $(seq 50); do valkey-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)
start_epp() { # name, base port, extra args...
  local name=$1 base=$2; shift 2
  "$epp" --endpoints-file "$dir/endpoints.yaml" --listen-address 127.0.0.1 --grpc-port "$base" \
    --query-port $((base + 1)) --health-port $((base + 2)) --metrics-port $((base + 3)) "$@" \
    >"$dir/$name.log" 2>&1 &
  pids+=($!); echo $!
}
printf '| interval | replica CPU %% (sharing) | replica CPU %% (off, same run) | extra per replica | Valkey CPU %% |\n|---|---:|---:|---:|---:|\n'
n=0
for iv in "${intervals[@]}"; do
  n=$((n + 1)); b=$((30000 + n * 100))
  share=(--shared-inflight-url "redis://127.0.0.1:$port/0" --shared-inflight-pool cost$n --shared-inflight-interval "$iv")
  a=$(start_epp a$n $b "${share[@]}" --shared-inflight-replica a)
  p=$(start_epp b$n $((b + 10)) "${share[@]}" --shared-inflight-replica b)
  o=$(start_epp off$n $((b + 20)))
  sleep 3
  a0=$(cpu "$a"); o0=$(cpu "$o"); v0=$(cpu "$vk")
  sleep "$secs"
  a1=$(cpu "$a"); o1=$(cpu "$o"); v1=$(cpu "$vk")
  kill "$a" "$p" "$o"; wait "$a" "$p" "$o" 2>/dev/null || true
  awk -v iv="$iv" -v a=$((a1 - a0)) -v o=$((o1 - o0)) -v v=$((v1 - v0)) -v t="$tck" -v s="$secs" \
    'BEGIN { pa = 100 * a / t / s; po = 100 * o / t / s; pv = 100 * v / t / s;
             printf "| %s | %.2f | %.2f | %+.2f | %.2f |\n", iv, pa, po, pa - po, pv }'
done
