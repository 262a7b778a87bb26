"""Multi-probe (`index.score(..., n_probes=P)`, ours) against the paper's single bucket, by AUC.

    python benchmarks/probes.py ped2                     # Ped2 demo features, LSH and the demo's LLSH
    python benchmarks/probes.py adbench                  # ADBench MVTec, LSH and the no-video-ids LLSH
    python benchmarks/probes.py st --bundle DIR --lsh lsh.llsh --llsh llsh.llsh   # Table 2's saved models

Seeds 0-4 by default (--seeds); b = 8, r = 32.  Prints one row per method and P.  --on-miss: P
probes only for the queries that miss every table (`score(..., miss_probes=P)`), the others keep
their single bucket.  --reduce mean: the mean over the tables that hit instead of the minimum.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from llsh_index.cli import int_list  # noqa: E402  (argparse type; numpy-only import)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def probe_args(args, p):
    """score() keywords for P probes: per table for every query, or (--on-miss) for the missing ones only."""
    if args.on_miss:
        return {"miss_probes": p if p > 1 else 0, "reduce": args.reduce}
    return {"n_probes": p, "reduce": args.reduce}


def report(name, probes, rows):
    rows = np.asarray(rows, dtype=np.float64)  # (seeds, P, n_metrics)
    for i, p in enumerate(probes):
        vals = " ".join(f"{rows[:, i, k].mean():.4f}" for k in range(rows.shape[2]))
        spread = f"   (min over seeds {rows[:, i, 0].min():.4f})" if rows.shape[0] > 1 else ""  # one model: none
        print(f"{name:5s} P={p:3d}  {vals}{spread}", flush=True)


def ped2(args):
    from llsh_index import LearnableLSHIndex, metrics
    from llsh_index.cli import DEMO_TRAINING, frame_scores
    from llsh_index.datasets import load_ped2_demo

    demo = load_ped2_demo()
    names = sorted(demo.train)
    x = np.concatenate([demo.train[v] for v in names]).astype(np.float32)
    vids = np.concatenate([np.full(len(demo.train[v]), i) for i, v in enumerate(names)])
    tests = sorted(demo.test)

    def auc(index, p):
        sc = {v: frame_scores(index.score(demo.test[v], **probe_args(args, p)), demo.frame_index["test"].get(v),
                              len(demo.test_labels[v])) for v in tests}
        r = metrics.evaluate(sc, {v: demo.test_labels[v] for v in tests}, sigma=12)
        return r.micro.auc, r.macro.auc

    print("Ped2: micro-AUC macro-AUC")
    for trained in (False, True):
        rows = []
        for seed in args.seeds:
            index = LearnableLSHIndex(x.shape[1], seed=seed)
            if trained:
                index.fit(x, video_ids=vids, progress=False, **DEMO_TRAINING)
            index.add(x)
            rows.append([auc(index, p) for p in args.probes])
        report("LLSH" if trained else "LSH", args.probes, rows)


def adbench(args):
    from sklearn.metrics import roc_auc_score

    from adbench_static import DATA, split
    from llsh_index import LearnableLSHIndex

    paths = sorted(glob.glob(os.path.join(args.data or DATA, "*.npz")))
    if not paths:
        raise SystemExit(f"no ADBench files under {args.data or DATA}")
    print("ADBench MVTec: mean image AUC over the categories")
    for trained in (False, True):
        rows = []
        for seed in args.seeds:
            per_cat = []
            for path in paths:
                d = np.load(path)
                train, test, y = split(d["X"].astype(np.float32), d["y"].astype(int), seed)
                index = LearnableLSHIndex(n_tables=8, n_bits=32, seed=seed)
                if trained:  # the fit() defaults without video ids (the documented fallback)
                    index.fit(train, progress=False)
                index.add(train)
                per_cat.append([roc_auc_score(y, index.score(test, **probe_args(args, p))) for p in args.probes])
            rows.append(np.mean(per_cat, axis=0)[:, None])
        report("LLSH" if trained else "LSH", args.probes, rows)


def st(args):
    from llsh_index import LearnableLSHIndex, synthetic
    from llsh_index.metrics import evaluate

    b = synthetic.open_bundle(args.bundle)
    test = np.asarray(b.test)
    print("synthetic ST: macro-AUC micro-AUC score-seconds")
    for name, path in (("LSH", args.lsh), ("LLSH", args.llsh)):
        index = LearnableLSHIndex.load(path)
        rows = []
        for p in args.probes:
            t0 = time.perf_counter()
            s = index.score(test, **probe_args(args, p))
            t = time.perf_counter() - t0
            e = evaluate(b.split_scores(s), b.labels, 12, align="centre")
            rows.append((e.macro.auc, e.micro.auc, t))
        report(name, args.probes, [rows])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=["ped2", "adbench", "st"])
    ap.add_argument("--probes", type=int_list(1), default=[1, 4, 8, 16, 32], help="comma-separated P values")
    ap.add_argument("--seeds", type=int_list(0), default=[0, 1, 2, 3, 4])
    ap.add_argument("--on-miss", action="store_true", help="probe only the queries that miss every table")
    ap.add_argument("--reduce", choices=["min", "mean"], default="min", help="over the tables (default min, the paper)")
    ap.add_argument("--data", default=None, help="adbench: the folder of the .npz files")
    ap.add_argument("--bundle", help="st: a feature bundle (benchmarks/table2.py writes one under --out/data)")
    ap.add_argument("--lsh", help="st: a saved untrained index (table2's models/lsh.llsh)")
    ap.add_argument("--llsh", help="st: a saved trained index (table2's models/llsh.llsh)")
    args = ap.parse_args()
    if args.dataset == "st" and not (args.bundle and args.lsh and args.llsh):
        raise SystemExit("st needs --bundle, --lsh and --llsh")
    {"ped2": ped2, "adbench": adbench, "st": st}[args.dataset](args)


if __name__ == "__main__":
    main()
