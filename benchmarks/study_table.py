"""Print the results table of docs/results.md (markdown) from a folder of run records.

Groups runs by their label (seeds of one method share it), in ladder order,
with mean and sample standard deviation over seeds.

    python benchmarks/study_table.py --runs /path/to/runs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.runs.records import load_records
from pipeline.workflows.ladder import summarise_group

ORDER = {"baseline": 0, "frozen": 1, "finetune": 2}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True)
    args = ap.parse_args()
    groups: dict[str, list] = {}
    for rec in load_records(args.runs):
        groups.setdefault(rec["group"], []).append(rec)
    rows = []
    for recs in groups.values():
        row = summarise_group(recs)
        row["kind"] = recs[0]["kind"]
        row["first"] = min(r["created"] for r in recs)
        row["seeds"] = sorted(r["seed"] for r in recs if r["seed"] is not None)
        rows.append(row)
    rows.sort(key=lambda r: (ORDER.get(r["kind"], 9), r["first"]))
    print("| method | seeds | trainable params | train s (mean) | val acc | test acc | test sd |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        seeds = ",".join(str(s) for s in r["seeds"]) or "-"
        params = f"{r['trainable_params']:,}" if r["trainable_params"] else "-"
        sd = f"{r['test_std']:.3f}" if r["n_seeds"] > 1 else "-"
        print(f"| {r['method']} | {seeds} | {params} | {r['train_seconds']:.0f} | "
              f"{r['val_accuracy']:.3f} | {r['test_accuracy']:.3f} | {sd} |")


if __name__ == "__main__":
    main()
