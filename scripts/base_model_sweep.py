#!/usr/bin/env python3
"""Measure one candidate base model of the phantom experiment (docs/experiments.md,
"Choosing the phantom base model").

Runs `hdpo experiment` on a variant of configs/phantom.toml whose grid holds the
base-model cell only (no SFT, no preference cells), on a phantom generated with a
VALIDATION seed (not the experiment's seed 0, so the base model is never chosen on
the test split), then reads the base cell's predictions and the generated ground
truth and prints:

- closed-VQA accuracy on conspicuous (lesion >= subtle threshold), subtle
  (0 < lesion < threshold) and normal studies, with n (strict match of the
  yes/no answer after lower-casing and stripping punctuation);
- the "yes" rate on normal studies' closed questions whose answer is "no";
- the lesion-masking probe's change rate, overall and on conspicuous samples
  (from the run's probe file);
- the base model stage's seconds (run.json), wall and user CPU seconds of the
  whole command (`/usr/bin/time -v`).

Each measurement is appended as one JSON line to OUT/sweep.jsonl.

    scripts/base_model_sweep.py --out scratch/sweep --name m48 \
        --set model.image_size=48 --set model.patch_size=8

Values in --set are TOML literals (numbers, true/false, "strings").
"""

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def apply_overrides(text, overrides):
    """Replace `key = value` lines of TOML `text` per section; add missing keys."""
    lines = text.splitlines()
    section = ""
    done = set()
    out = []
    # index in `out` of the last line of each section, to append missing keys
    last = {}
    for line in lines:
        m = re.match(r"^\[([^\]]+)\]\s*$", line)
        if m:
            section = m.group(1)
        km = re.match(r"^([A-Za-z_]+)\s*=", line)
        if km:
            full = f"{section}.{km.group(1)}" if section else km.group(1)
            if full in overrides:
                line = f"{km.group(1)} = {overrides[full]}"
                done.add(full)
        out.append(line)
        last[section] = len(out)
    extra_top = []
    for full, v in overrides.items():
        if full in done:
            continue
        sec, _, key = full.rpartition(".")
        if sec in last:
            out.insert(last[sec], f"{key} = {v}")
            for s in last:
                if last[s] >= last[sec] and s != sec:
                    last[s] += 1
            last[sec] += 1
        elif not sec:
            extra_top.append(f"{key} = {v}")
        else:
            out.append(f"[{sec}]")
            out.append(f"{key} = {v}")
            last[sec] = len(out)
    return "\n".join(extra_top + out) + "\n"


def norm(s):
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", s.lower()).split())


def subset_of(row, threshold):
    area = row.get("lesion_area") or 0.0
    if not row.get("finding") or area <= 0.0:
        return "normal"
    return "subtle" if area < threshold else "conspicuous"


def measure(run_dir, threshold):
    data = run_dir / "data" / "phantom"
    truth = {str(r["qid"]): r for r in json.loads((data / "test.json").read_text())}
    cell = run_dir / "cells" / "base"
    if not cell.is_dir():
        cands = [p for p in (run_dir / "cells").iterdir() if p.name.startswith("base")]
        cell = cands[0]
    preds = [json.loads(l) for l in (cell / "predictions_phantom_vqa.jsonl").read_text().splitlines() if l.strip()]
    acc = {k: [0, 0] for k in ("conspicuous", "subtle", "normal")}
    yes_on_normal = [0, 0]
    for p in preds:
        if p["answer_type"] != "closed":
            continue
        t = truth[p["id"]]
        s = subset_of(t, threshold)
        ref, pred = norm(p["reference"]), norm(p["prediction"])
        acc[s][0] += int(ref == pred)
        acc[s][1] += 1
        if s == "normal" and ref == "no":
            yes_on_normal[0] += int(pred.startswith("yes"))
            yes_on_normal[1] += 1
    out = {}
    for k, (hit, n) in acc.items():
        out[f"{k}_acc"] = hit / n if n else None
        out[f"{k}_n"] = n
    out["normal_yes_rate"] = yes_on_normal[0] / yes_on_normal[1] if yes_on_normal[1] else None
    probe_file = cell / "probe_phantom_vqa.json"
    if probe_file.is_file():
        probe = json.loads(probe_file.read_text())
        out["probe_rate"] = probe["rate"]
        out["probe_n"] = probe["n"]
        consp = [i for i in probe["items"] if subset_of(truth[i["id"]], threshold) == "conspicuous"]
        closed_consp = [i for i in consp if truth[i["id"]]["answer_type"] == "CLOSED"]
        out["probe_conspicuous_rate"] = sum(i["changed"] for i in consp) / len(consp) if consp else None
        out["probe_conspicuous_n"] = len(consp)
        out["probe_conspicuous_closed_rate"] = (
            sum(i["changed"] for i in closed_consp) / len(closed_consp) if closed_consp else None
        )
        out["probe_conspicuous_closed_n"] = len(closed_consp)
    run = json.loads((run_dir / "run.json").read_text())
    out["stage_seconds"] = run["stage_seconds"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hdpo", default=str(ROOT / "target" / "release" / "hdpo"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "phantom.toml"))
    ap.add_argument("--out", required=True, help="scratch folder (runs and sweep.jsonl)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--seed", type=int, default=1, help="validation seed of the generator (not 0)")
    ap.add_argument("--val-studies", type=int, default=200, help="validation studies (the run's test split)")
    ap.add_argument("--set", action="append", default=[], help="section.key=TOML value")
    ap.add_argument("--measure-only", action="store_true", help="re-read an existing run")
    a = ap.parse_args()
    if a.seed == 0:
        sys.exit("the base model is chosen on a validation seed, not the experiment's seed 0")
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = {
        "name": f'"{a.name}"',
        "seed": str(a.seed),
        "data.test": str(a.val_studies),
        "data.max_test_per_dataset": "0",
        # The encoder does not shape the base model; one epoch keeps the sweep short.
        "encoder.epochs": "1",
        "grid.methods": "[]",
        "grid.sft": "[false]",
        "grid.error_types": "false",
        "grid.lambda_zero": "false",
        "grid.heatmap_sources": "[]",
        "eval.probe_max_samples": "0",
    }
    for s in a.set:
        k, _, v = s.partition("=")
        overrides[k.strip()] = v.strip()
    run_dir = out / a.name
    cfg_path = out / f"{a.name}.toml"
    text = apply_overrides(Path(a.config).read_text(), overrides)
    cfg_path.write_text(text)
    threshold = float(re.search(r"subtle_threshold\s*=\s*([0-9.eE-]+)", text).group(1))
    wall = user = None
    if not a.measure_only:
        cmd = ["/usr/bin/time", "-v", a.hdpo, "experiment", "--config", str(cfg_path), "--out", str(run_dir)]
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - t0
        (out / f"{a.name}.log").write_text(p.stdout + "\n" + p.stderr)
        if p.returncode != 0:
            sys.exit(f"hdpo experiment failed (see {out / (a.name + '.log')}):\n{p.stderr[-3000:]}")
        m = re.search(r"User time \(seconds\): ([0-9.]+)", p.stderr)
        user = float(m.group(1)) if m else None
    r = measure(run_dir, threshold)
    r.update({"name": a.name, "set": a.set, "seed": a.seed, "wall_s": wall, "user_s": user})
    with open(out / "sweep.jsonl", "a") as f:
        f.write(json.dumps(r) + "\n")
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"
    base_s = r["stage_seconds"].get("base model")
    print(
        f"| {a.name} | {' '.join(a.set)} | {pct(r['conspicuous_acc'])} ({r['conspicuous_n']}) "
        f"| {pct(r['subtle_acc'])} ({r['subtle_n']}) | {pct(r['normal_acc'])} ({r['normal_n']}) "
        f"| {pct(r.get('probe_conspicuous_closed_rate'))} ({r.get('probe_conspicuous_closed_n')}) "
        f"| {pct(r.get('probe_rate'))} ({r.get('probe_n')}) "
        f"| {base_s:.0f} | {wall if wall is None else round(wall)} | {user if user is None else round(user)} |"
    )


if __name__ == "__main__":
    main()
