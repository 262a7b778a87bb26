"""LLSH without video ids (feature-space-neighbour positives) against untrained LSH on static data.

ADBench's ResNet-18 embeddings of the 15 MVTec-AD categories (../shared/data/adbench_resnet18):
per category, half of the normal images (seeded) train and index, the other half plus every
anomalous image are scored; the AUC is image-level.  Both indexes share seed, b and r.

    python benchmarks/adbench_static.py [--iterations 30] [--n-tables 8] [--n-bits 32] [--seed 0]
    python benchmarks/adbench_static.py --project-mean --lr 0.003 --seed 0   # ... seeds 0-4 (RESULTS.md)
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time

import numpy as np
from sklearn.metrics import roc_auc_score

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "adbench_resnet18")


def split(x, y, seed):
    rng = np.random.default_rng(seed)
    normal = np.flatnonzero(y == 0)
    rng.shuffle(normal)
    train = normal[: len(normal) // 2]
    test = np.concatenate([normal[len(normal) // 2:], np.flatnonzero(y == 1)])
    return x[train], x[test], y[test]


def run_category(path, args):
    from llsh_index import LearnableLSHIndex

    d = np.load(path)
    train, test, labels = split(d["X"].astype(np.float32), d["y"].astype(int), args.seed)
    out = {"category": os.path.basename(path)[9:-4], "n_train": len(train), "n_test": len(test)}
    for name, fit in (("LSH", False), ("LLSH", True)):
        index = LearnableLSHIndex(n_tables=args.n_tables, n_bits=args.n_bits, seed=args.seed)
        if fit:
            index.fit(train, iterations=args.iterations, batch_size=args.batch_size, queue_size=args.queue_size,
                      lr=args.lr, momentum=args.momentum, n_neighbors=args.n_neighbors, progress=False,
                      temperature=args.temperature, lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps, project_mean=args.project_mean)
        index.add(train)
        for mode in ("mean", "squared"):
            out[f"{name}_{mode}"] = roc_auc_score(labels, index.score(test, mode=mode))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--n-tables", type=int, default=8)
    ap.add_argument("--n-bits", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--queue-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.99)
    ap.add_argument("--n-neighbors", type=int, default=5)
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine", "linear"])
    ap.add_argument("--warmup-steps", type=int, default=0)
    ap.add_argument("--project-mean", action="store_true", help="drop the gradient along the data's mean direction")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split, the layers and training")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(args.data, "*.npz")))
    if not files:
        raise SystemExit(f"no ADBench files under {args.data}")
    t0 = time.time()
    rows = [run_category(f, args) for f in files]
    keys = ["LSH_mean", "LLSH_mean", "LSH_squared", "LLSH_squared"]
    print("| category | n_train | n_test | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for r in rows:
        print(f"| {r['category']} | {r['n_train']} | {r['n_test']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    print("| **mean** | | | " + " | ".join(f"**{means[k]:.3f}**" for k in keys) + " |")
    wins = sum(r["LLSH_mean"] > r["LSH_mean"] for r in rows)
    print(f"\nLLSH (mean mode) beats LSH on {wins}/{len(rows)} categories; {time.time() - t0:.0f}s; settings {vars(args)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "means": means, "settings": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
