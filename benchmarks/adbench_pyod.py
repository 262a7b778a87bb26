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
    python benchmarks/adbench_pyod.py --seeds 0,1,2,3,4 --plot benchmarks/figures/adbench_pyod.png
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np
from sklearn.metrics import roc_auc_score

from adbench_static import DATA, category_files, split  # the same files and split as the LSH / LLSH benchmark
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
    ap.add_argument("--plot", type=output_file, default=None,
                    help="draw the figure here (benchmarks/figures/adbench_pyod.png in RESULTS.md)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    files = category_files(args.data)
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
    if args.plot:
        plot(runs, args.plot)


def plot(runs, path):
    """Left: each detector's mean AUC over the categories, one dot per seed and the mean; right: per
    category (mean over seeds), LLSH's AUC minus PyOD's KNN's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(runs)
    names = list(runs[seeds[0]][0])[3:]
    cats = [r["category"] for r in runs[seeds[0]]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.3]})
    for i, n in enumerate(names):
        per_seed = [np.mean([r[n]["auc"] for r in runs[s]]) for s in seeds]
        left.scatter(per_seed, [i] * len(per_seed), s=26, color="C0", alpha=0.6, zorder=3,
                     label="one seed" if i == 0 else None)
        left.scatter([np.mean(per_seed)], [i], s=140, marker="|", color="k", zorder=4,
                     label="mean over seeds" if i == 0 else None)
    left.set_yticks(range(len(names)), names)
    left.invert_yaxis()
    left.set_xlabel("image AUC, mean over the 15 categories")
    left.grid(True, axis="x", alpha=0.3)
    left.legend(fontsize=7, loc="lower right")
    diff = [np.mean([runs[s][c]["LLSH"]["auc"] - runs[s][c]["KNN"]["auc"] for s in seeds]) for c in range(len(cats))]
    right.bar(range(len(cats)), diff, color=["C2" if v >= 0 else "C3" for v in diff])
    right.axhline(0, color="k", lw=0.8)
    right.set_xticks(range(len(cats)), cats, rotation=60, ha="right", fontsize=8)
    right.set_ylabel("LLSH AUC - PyOD KNN AUC")
    right.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"ADBench MVTec-AD ResNet-18 embeddings: LLSH among PyOD's detectors (seeds "
                 f"{','.join(map(str, seeds))})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


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
