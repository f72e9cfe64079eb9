"""The calibration-accuracy experiment's workload (BENCHMARKS.md, "Calibration against real vLLM").

Usage: calibration_trace.py SEED PHASES_JSON, PHASES_JSON a list of
[total req/s, [min, max prompt tokens], [min, max output tokens], seconds]. Writes merged.jsonl
(kvpick's trace format, token ids < 1024 for the tiny model; a 64-token system prompt shared by 4
groups), and pod0.jsonl / pod1.jsonl: request k goes to pod k mod 2, which is what the simulator's
round-robin policy does with merged.jsonl on 2 engines.
"""
import json, random, sys
# phases: (total rate req/s, prompt range, output range, seconds)
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
phases = json.loads(sys.argv[2]) if len(sys.argv) > 2 else [[6, [64, 256], [16, 48], 30], [12, [64, 256], [32, 96], 30], [4, [384, 768], [16, 32], 30]]
rng = random.Random(seed)
reqs = []
t0 = 0.0
for rate, (p0, p1), (o0, o1), secs in phases:
    t = t0
    while True:
        t += rng.expovariate(rate)
        if t >= t0 + secs: break
        n = len(reqs)
        g = n % 4
        sysp = [3 + (g * 131 + i * 7919) % 1000 for i in range(64)]
        L = rng.randint(p0, p1)
        user = [3 + rng.randrange(1000) for _ in range(L - 64)]
        reqs.append({"timestamp_ms": round(t * 1000, 3), "output_length": rng.randint(o0, o1), "tokens": sysp + user})
    t0 += secs
with open("merged.jsonl", "w") as f:
    for r in reqs: f.write(json.dumps(r) + "\n")
for p in range(2):
    with open(f"pod{p}.jsonl", "w") as f:
        for r in reqs[p::2]: f.write(json.dumps(r) + "\n")
print(len(reqs), "requests")
