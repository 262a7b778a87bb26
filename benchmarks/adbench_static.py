"""LLSH without video ids (feature-space-neighbour positives) against untrained LSH on static data.

ADBench's ResNet-18 embeddings of the 15 MVTec-AD categories (../shared/data/adbench_resnet18):
per category, half of the normal images (seeded) train and index, the other half plus every
anomalous image are scored; the AUC is image-level.  Both indexes share seed, b and r.  LLSH is
fit() without video_ids at its fallback defaults (training.FALLBACK_DEFAULTS) unless a training
option is given.  The means are also printed for the 7 categories the defaults were chosen on
(odd positions in name order) and the 8 held out (even positions).

    python benchmarks/adbench_static.py                  # seeds 0-4, the table in RESULTS.md (~75 s)
    python benchmarks/adbench_static.py --seeds 0        # one seed, with the per-category table
    python benchmarks/adbench_static.py --project-pcs 0  # the fallback without the projection
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time

import numpy as np

from llsh_index.cli import int_list, nonnegative_int, output_file, positive_int  # argparse types
from sklearn.metrics import roc_auc_score

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "adbench_resnet18")


def category_files(data):
    """The ADBench category files under `data`, sorted by name (exits with a message if none)."""
    files = sorted(glob.glob(os.path.join(data, "*.npz")))
    if not files:
        raise SystemExit(f"no ADBench files under {data}")
    return files


def split(x, y, seed):
    rng = np.random.default_rng(seed)
    normal = np.flatnonzero(y == 0)
    rng.shuffle(normal)
    train = normal[: len(normal) // 2]
    test = np.concatenate([normal[len(normal) // 2:], np.flatnonzero(y == 1)])
    return x[train], x[test], y[test]


TRAINING = ("iterations", "batch_size", "queue_size", "lr", "momentum", "n_neighbors", "temperature", "lr_schedule",
            "warmup_steps", "project_mean", "project_pcs")


def run_category(path, args):
    from llsh_index import LearnableLSHIndex

    d = np.load(path)
    train, test, labels = split(d["X"].astype(np.float32), d["y"].astype(int), args.seed)
    out = {"category": os.path.basename(path)[9:-4], "n_train": len(train), "n_test": len(test)}
    for name, fit in (("LSH", False), ("LLSH", True)):
        index = LearnableLSHIndex(n_tables=args.n_tables, n_bits=args.n_bits, seed=args.seed)
        if fit:
            given = {k: getattr(args, k) for k in TRAINING if getattr(args, k) is not None}
            index.fit(train, progress=False, **given)
        index.add(train)
        for mode in ("mean", "squared"):
            out[f"{name}_{mode}"] = roc_auc_score(labels, index.score(test, mode=mode))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--n-tables", type=positive_int, default=8)
    ap.add_argument("--n-bits", type=positive_int, default=32)
    # training options: None = fit()'s fallback default (training.FALLBACK_DEFAULTS)
    ap.add_argument("--iterations", type=positive_int, default=None)
    ap.add_argument("--batch-size", type=positive_int, default=None)
    ap.add_argument("--queue-size", type=positive_int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--momentum", type=float, default=None)
    ap.add_argument("--n-neighbors", type=positive_int, default=None)
    ap.add_argument("--temperature", type=float, default=None)
    ap.add_argument("--lr-schedule", default=None, choices=["constant", "cosine", "linear"])
    ap.add_argument("--warmup-steps", type=nonnegative_int, default=None)
    ap.add_argument("--project-mean", type=int, choices=[0, 1], default=None,
                    help="1/0: drop the gradient along the data's mean direction")
    ap.add_argument("--project-pcs", type=nonnegative_int, default=None, help="top principal directions removed from the layers")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch threads (1: the runs in RESULTS.md)")
    ap.add_argument("--seeds", type=int_list(0), default=[0, 1, 2, 3, 4],
                    help="comma-separated seeds of the split, the layers and training (one run each; one seed: "
                         "per-category table)")
    ap.add_argument("--json", type=output_file, default=None, help="write the results here")
    args = ap.parse_args()
    if args.project_mean is not None:
        args.project_mean = bool(args.project_mean)
    import torch

    torch.set_num_threads(args.threads)
    files = category_files(args.data)
    runs = {}
    for seed in args.seeds:
        t0 = time.time()
        args.seed = seed
        runs[seed] = rows = [run_category(f, args) for f in files]
        if len(args.seeds) == 1:
            print_categories(rows)
        print(f"seed {seed}: LLSH (mean mode) beats LSH on {sum(r['LLSH_mean'] > r['LSH_mean'] for r in rows)}/"
              f"{len(rows)} categories; {time.time() - t0:.0f}s", flush=True)
    print("\nMean image AUC, mode mean (held out: even positions in name order; chosen on: odd)\n")
    print("| seed | LSH (15) | LLSH (15) | diff | LSH held out | LLSH held out | diff | LSH chosen on | LLSH chosen on "
          "| diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    table = []
    for seed, rows in runs.items():
        v = [np.mean([r[k] for r in sel]) for sel in (rows, rows[0::2], rows[1::2]) for k in ("LSH_mean", "LLSH_mean")]
        table.append(v)
        print(f"| {seed} | " + " | ".join(f"{v[i]:.4f} | {v[i + 1]:.4f} | {100 * (v[i + 1] - v[i]):+.2f}"
                                         for i in (0, 2, 4)) + " |")
    v = np.mean(table, axis=0)
    print("| **mean** | " + " | ".join(f"**{v[i]:.4f}** | **{v[i + 1]:.4f}** | **{100 * (v[i + 1] - v[i]):+.2f}**"
                                       for i in (0, 2, 4)) + " |")
    settings = {k: v for k, v in vars(args).items() if k != "seed"}
    print(f"\nsettings {settings}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": {str(k): r for k, r in runs.items()}, "settings": settings}, f, indent=1)


def print_categories(rows):
    keys = ["LSH_mean", "LLSH_mean", "LSH_squared", "LLSH_squared"]
    print("| category | n_train | n_test | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for r in rows:
        print(f"| {r['category']} | {r['n_train']} | {r['n_test']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    print("| **mean** | | | " + " | ".join(f"**{means[k]:.3f}**" for k in keys) + " |")

if __name__ == "__main__":
    main()
