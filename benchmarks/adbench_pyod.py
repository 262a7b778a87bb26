"""LLSH among PyOD's detectors on static real embeddings (ADBench MVTec-AD), through LLSHPyODDetector.

The split is adbench_static.py's (per category, half of the normal images, seeded, train; the
rest plus every anomalous image are scored; image-level AUC).  Every detector sees the same rows:

- LSH / LLSH: LLSHPyODDetector(train=False) / LLSHPyODDetector() (fit() without video ids: the
  static-data fallback), b 8, r 32, mode mean, the seed of the split;
- LLSH bagged: PyOD's FeatureBagging of 5 LLSHPyODDetector (the detector inside PyOD's ensemble);
- PyOD's KNN (k 5, largest distance), LOF (20 neighbours), IForest (100 trees, the seed), ECOD.

Times are fit and decision_function wall seconds summed over the categories, in this process
(torch and BLAS at --threads); each is also given as a ratio to PyOD's KNN in the same run.

    python benchmarks/adbench_pyod.py                # seeds 0-2 (~2 min on 2 cores)
    python benchmarks/adbench_pyod.py --seeds 0      # one seed, with the per-category table
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time
import warnings

import numpy as np
from sklearn.metrics import roc_auc_score

from adbench_static import DATA, split  # the same split as the LSH / LLSH benchmark
from llsh_index.cli import int_list, output_file, positive_int  # argparse types


def detectors(seed):
    from pyod.models.ecod import ECOD
    from pyod.models.feature_bagging import FeatureBagging
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.lof import LOF

    from llsh_index import LLSHPyODDetector

    return {
        "LSH": LLSHPyODDetector(train=False, seed=seed),
        "LLSH": LLSHPyODDetector(seed=seed),
        "LLSH bagged": FeatureBagging(base_estimator=LLSHPyODDetector(seed=seed), n_estimators=5, random_state=seed),
        "KNN": KNN(n_neighbors=5),
        "LOF": LOF(n_neighbors=20),
        "IForest": IForest(n_estimators=100, random_state=seed),
        "ECOD": ECOD(),
    }


def run_category(path, seed):
    d = np.load(path)
    train, test, labels = split(d["X"].astype(np.float32), d["y"].astype(int), seed)
    out = {"category": os.path.basename(path)[9:-4], "n_train": len(train), "n_test": len(test)}
    for name, det in detectors(seed).items():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the detectors' calibration warnings: AUC only here
            det.fit(train)
            t1 = time.perf_counter()
            scores = det.decision_function(test)
        t2 = time.perf_counter()
        out[name] = {"auc": float(roc_auc_score(labels, scores)), "fit_s": t1 - t0, "score_s": t2 - t1}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--seeds", type=int_list(0), default=[0, 1, 2], help="comma-separated seeds (split, layers)")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch threads (1: the runs in RESULTS.md)")
    ap.add_argument("--json", type=output_file, default=None, help="write the results here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    files = sorted(glob.glob(os.path.join(args.data, "*.npz")))
    if not files:
        raise SystemExit(f"no ADBench files under {args.data}")
    runs = {}
    for seed in args.seeds:
        t0 = time.time()
        runs[seed] = rows = [run_category(f, seed) for f in files]
        if len(args.seeds) == 1:
            print_categories(rows)
        print(f"seed {seed}: {time.time() - t0:.0f}s", flush=True)
    names = list(runs[args.seeds[0]][0])[3:]
    print(f"\nMean image AUC over the {len(files)} categories, per seed; times summed over categories and seeds\n")
    print("| detector | " + " | ".join(f"seed {s}" for s in runs) + " | mean | fit s | score s | fit / KNN's | score / KNN's |")
    print("|---|" + "---|" * (len(runs) + 5))
    total = {n: [sum(r[n][k] for rows in runs.values() for r in rows) for k in ("fit_s", "score_s")] for n in names}
    for n in names:
        aucs = [np.mean([r[n]["auc"] for r in rows]) for rows in runs.values()]
        fit_s, score_s = total[n]
        print(f"| {n} | " + " | ".join(f"{a:.4f}" for a in aucs) + f" | **{np.mean(aucs):.4f}** | {fit_s:.2f} | "
              f"{score_s:.2f} | {fit_s / total['KNN'][0]:.1f}x | {score_s / total['KNN'][1]:.1f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": {str(k): r for k, r in runs.items()}, "seeds": args.seeds, "threads": args.threads}, f,
                      indent=1)


def print_categories(rows):
    names = list(rows[0])[3:]
    print("| category | n_train | n_test | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for r in rows:
        print(f"| {r['category']} | {r['n_train']} | {r['n_test']} | " + " | ".join(f"{r[n]['auc']:.3f}" for n in names)
              + " |")
    print("| **mean** | | | " + " | ".join(f"**{np.mean([r[n]['auc'] for r in rows]):.3f}**" for n in names) + " |")


if __name__ == "__main__":
    main()
