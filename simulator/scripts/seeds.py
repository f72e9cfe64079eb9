#!/usr/bin/env python3
"""Aggregates `kvpick-sim run --out DIR` results over seeds: one Markdown row per policy.

Usage: seeds.py DIR [DIR...]   (each DIR holds the results.json of one seed's run)

Cells are the mean over seeds; TTFT cells add the range (min–max) over seeds, so that a
difference inside the seed spread reads as a tie.
"""
import json
import sys
from collections import defaultdict


def main(dirs):
    rows = defaultdict(list)
    order = []
    for d in dirs:
        with open(f"{d}/results.json") as f:
            for s in json.load(f)["summaries"]:
                if s["policy"] not in rows:
                    order.append(s["policy"])
                rows[s["policy"]].append(s)
    mean = lambda xs: sum(xs) / len(xs)
    print(f"| policy (seeds: {len(dirs)}) | TTFT p50 s (range) | TTFT p90 s (range) | TTFT p99 s "
          "| E2E p90 s | out tok/s | hit % | imbalance | pred err p50 s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in order:
        ss = rows[p]
        cell = lambda key, q: (
            f"{mean([s[key][q] for s in ss]):.3f} "
            f"({min(s[key][q] for s in ss):.3f}–{max(s[key][q] for s in ss):.3f})"
        )
        errs = [s["prediction_error"]["p50"] for s in ss if s.get("prediction_error")]
        print(
            f"| {p} | {cell('ttft', 'p50')} | {cell('ttft', 'p90')} "
            f"| {mean([s['ttft']['p99'] for s in ss]):.3f} "
            f"| {mean([s['e2e']['p90'] for s in ss]):.2f} "
            f"| {mean([s['output_tok_s'] for s in ss]):.0f} "
            f"| {100 * mean([s['hit_rate'] for s in ss]):.1f} "
            f"| {mean([s['imbalance'] for s in ss]):.2f} "
            f"| {f'{mean(errs):.3f}' if errs else '-'} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
