#!/usr/bin/env python3
"""The picker-replica table: one Markdown row per `kvpick-sim run --out DIR` (replicas, sharing)
and policy, with TTFT p90 relative to the one-replica run of the same policy.

Usage: replicas.py DIR [DIR...]   (each DIR holds the results.json of one run; the runs of one
table share their workload and differ in --replicas / --share-inflight)
"""
import json
import sys


def main(dirs):
    rows = []
    for d in dirs:
        with open(f"{d}/results.json") as f:
            r = json.load(f)
        st = r["settings"]
        share = st.get("share_inflight_us")
        sharing = "-" if st.get("replicas", 1) == 1 else (
            f"{share / 1000:g} ms" if share is not None else "no")
        for s in r["summaries"]:
            rows.append((s["policy"], st.get("replicas", 1), sharing, s))
    one = {p: s["ttft"]["p90"] for p, n, _, s in rows if n == 1}
    print("| policy | replicas | shared in-flight | TTFT p50 s | TTFT p90 s | p90 vs 1 replica "
          "| queue p90 s | hit % | imbalance |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for p, n, sharing, s in sorted(rows, key=lambda x: (x[0], x[1], x[2] != "no")):
        base = one.get(p)
        rel = f"{s['ttft']['p90'] / base:.2f}×" if base else "-"
        print(f"| {p} | {n} | {sharing} | {s['ttft']['p50']:.3f} | {s['ttft']['p90']:.3f} | {rel} "
              f"| {s['queue']['p90']:.3f} | {100 * s['hit_rate']:.1f} | {s['imbalance']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
