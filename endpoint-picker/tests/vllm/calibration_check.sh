#!/usr/bin/env bash
# The calibration-accuracy experiment of BENCHMARKS.md ("Calibration against real vLLM"), end to end:
# two real vLLM CPU servers, a real Prometheus scraping them, a load from `kvpick-sim load`, a fit by
# `kvpick-sim calibrate` from Prometheus alone, and a replay by `kvpick-sim run` on that profile.
# Prints client vs simulated TTFT p50/p90. Usage (from the repository root, after .ci/setup):
#   endpoint-picker/tests/vllm/calibration_check.sh OUTDIR [SEED] [PHASES_JSON]
# KVPICK_SIM (default: kvpick-sim on PATH) and KVPICK_VLLM_VENV / KVPICK_VLLM_MODEL_DIR as the suite.
set -euo pipefail
out=$(realpath -m "${1:?usage: calibration_check.sh OUTDIR [SEED] [PHASES_JSON]}")
seed=${2:-1}
phases=${3:-'[[8, [64, 256], [16, 48], 25], [14, [64, 256], [32, 96], 25], [5, [384, 768], [16, 32], 25]]'}
here=$(cd "$(dirname "$0")" && pwd)
sim=${KVPICK_SIM:-kvpick-sim}
venv=${KVPICK_VLLM_VENV:-$HOME/.cache/kvpick-vllm-venv}
model=${KVPICK_VLLM_MODEL_DIR:-$HOME/.cache/kvpick-vllm-tiny-model}
command -v prometheus >/dev/null || { echo "prometheus not installed (.ci/setup)" >&2; exit 1; }
[ -x "$venv/bin/python" ] || { echo "no vLLM venv at $venv (.ci/setup)" >&2; exit 1; }
mkdir -p "$out" && cd "$out"
[ -f "$model/config.json" ] || HF_HUB_OFFLINE=1 "$venv/bin/python" "$here/make_tiny_model.py" --out "$model"
python3 "$here/calibration_trace.py" "$seed" "$phases"

pids=()
cleanup() { for p in "${pids[@]}"; do kill -- -"$p" 2>/dev/null || true; done; }
trap cleanup EXIT
ports=(18300 18301)
for i in 0 1; do
  # Each server (its API process and its engine core) on a core of its own when the host has two,
  # so that one server's step time does not depend on what the other is doing.
  pin=(); [ "$(nproc)" -ge 2 ] && [ -z "${KVPICK_CAL_NO_PIN:-}" ] && pin=(taskset -c "$i")
  setsid "${pin[@]}" env VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind OMP_NUM_THREADS=1 \
    HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
    "$venv/bin/python" -m vllm.entrypoints.openai.api_server --model "$model" \
    --served-model-name tiny --host 127.0.0.1 --port "${ports[$i]}" --block-size 32 \
    --dtype float32 --enforce-eager --num-gpu-blocks-override 1024 --max-num-seqs 8 \
    --max-model-len 4096 --enable-prefix-caching --enable-prompt-tokens-details \
    >"vllm$i.log" 2>&1 &
  pids+=($!)
done
cat >prometheus.yml <<YML
global: {scrape_interval: 1s, scrape_timeout: 1s}
scrape_configs:
  - job_name: vllm
    static_configs: [{targets: ['127.0.0.1:${ports[0]}', '127.0.0.1:${ports[1]}']}]
YML
setsid prometheus --config.file=prometheus.yml --storage.tsdb.path=tsdb \
  --web.listen-address=127.0.0.1:19390 >prometheus.log 2>&1 &
pids+=($!)
for p in "${ports[@]}"; do
  for _ in $(seq 600); do curl -fs "http://127.0.0.1:$p/health" >/dev/null && break; sleep 1; done
  curl -fs "http://127.0.0.1:$p/health" >/dev/null || { echo "vLLM on $p not healthy" >&2; exit 1; }
done
sleep 3
start=$(date +%s)
"$sim" load --url "http://127.0.0.1:${ports[0]}" --trace pod0.jsonl --model tiny --out load0.json >load0.txt &
l0=$!
"$sim" load --url "http://127.0.0.1:${ports[1]}" --trace pod1.jsonl --model tiny --out load1.json >load1.txt
wait "$l0"
end=$(date +%s)
echo "start=$start end=$end" >window.txt
sleep 4
"$sim" calibrate --prometheus http://127.0.0.1:19390 --window "$((end - start + 2))s" --end "$end" \
  --resolution 3s --profile tiny --max-num-batched-tokens 2048 --max-num-seqs 8 \
  --max-model-len 4096 --groups 4 --min-gaps 10 --check-policy none --out cal >calibrate.txt
"$sim" run --trace merged.jsonl --policies round-robin --engines 2 --profile-file cal/profile.yaml \
  --out sim >run.txt
python3 - <<'PY'
import json
t = sorted(r["ttft_s"] for f in ("load0.json", "load1.json")
           for r in json.load(open(f))["requests"] if r.get("ttft_s") is not None)
q = lambda p: t[min(len(t) - 1, int(p * len(t)))]
sim = json.load(open("sim/results.json"))["summaries"][0]["ttft"]
line = "client TTFT p50 %.1f ms p90 %.1f ms (%d requests); simulated p50 %.1f ms p90 %.1f ms; ratio %.2f / %.2f" % (
    q(0.5) * 1e3, q(0.9) * 1e3, len(t), sim["p50"] * 1e3, sim["p90"] * 1e3, sim["p50"] / q(0.5), sim["p90"] / q(0.9))
print(line)
open("result.txt", "w").write(line + "\n")
PY
