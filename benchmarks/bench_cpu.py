"""CPU benchmark of issue 2: LearnableLSHIndex against the projection GEMM and faiss exact KNN.

Clustered float32 data (N=200,000 train, M=20,000 queries, d=2304, b=8, r=32 by default).
Every ratio is against a baseline measured in the same run, on the same machine:
  score() / GEMM(M x d x b*r)      target <= 1.25
  add()   / GEMM(N x d x b*r)      target <= 1.5
  faiss KNN (k=1024 mean) / score() target >= 300 (KNN timed on a query subset, scaled linearly)
  peak RSS of add() and index size against the raw features

    python benchmarks/bench_cpu.py            # full size (a few minutes, ~4 GB RAM)
    python benchmarks/bench_cpu.py --quick    # small shapes, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np

from llsh_index.cli import output_file, positive_int  # argparse types
import torch


def clustered(rng, n, d, centres, spread):
    out = np.empty((n, d), np.float32)
    step = 20000
    for i in range(0, n, step):
        m = min(step, n - i)
        c = centres[rng.integers(0, len(centres), m)]
        out[i:i + m] = c + spread * rng.standard_normal((m, d), dtype=np.float32)
    return out


def paired(baseline, fn, repeat):
    """(baseline times, fn times), each fn call right after its own baseline call."""
    tb, tf = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        baseline()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        tb.append(t1 - t0)
        tf.append(t2 - t1)
    return tb, tf


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=positive_int, default=200_000)
    ap.add_argument("--m", type=positive_int, default=20_000)
    ap.add_argument("--d", type=positive_int, default=2304)
    ap.add_argument("--n-tables", type=positive_int, default=8)
    ap.add_argument("--n-bits", type=positive_int, default=32)
    ap.add_argument("--clusters", type=positive_int, default=200)
    ap.add_argument("--spread", type=float, default=1.0, help="within-cluster noise (centres have unit-scale coordinates)")
    ap.add_argument("--knn-queries", type=positive_int, default=500, help="query subset for faiss KNN, scaled to M")
    ap.add_argument("--knn-k", type=positive_int, default=1024)
    ap.add_argument("--no-knn", action="store_true", help="skip the faiss KNN part (quicker iterations)")
    ap.add_argument("--repeat", type=positive_int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=output_file, default=None, help="also write the results here")
    args = ap.parse_args()
    if args.quick:
        args.n, args.m, args.d, args.knn_queries, args.repeat = 20_000, 2_000, 512, 200, 2

    from llsh_index import LearnableLSHIndex

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.clusters, args.d), dtype=np.float32)
    train = clustered(rng, args.n, args.d, centres, args.spread)
    test = clustered(rng, args.m, args.d, centres, args.spread)
    rss_data = peak_rss_mb()
    b, r, threads = args.n_tables, args.n_bits, torch.get_num_threads()
    print(f"N={args.n} M={args.m} d={args.d} b={b} r={r} torch threads={threads}", flush=True)

    w = torch.randn(b * r, args.d)
    tt, tq = torch.from_numpy(train), torch.from_numpy(test)
    index = LearnableLSHIndex(args.d, n_tables=b, n_bits=r)

    def add():
        index.reset()
        index.add(train)

    # Each call is timed right after its own GEMM baseline, alternating, `repeat` times: on this
    # shared VM the GEMM alone drifts by 30% between minutes, so a baseline taken minutes apart
    # from the call it normalises is not comparable.  Reported: the best call over the best GEMM
    # (best-of, the usual figure) and the median of the per-pair ratios (robust to drift).
    tt @ w.T, tq @ w.T  # the baselines' own peak memory comes before add()'s is measured
    rss_before = peak_rss_mb()
    gemm_n, t_adds = paired(lambda: tt @ w.T, add, args.repeat)
    rss_add = peak_rss_mb()
    # add() leaves the float64 bucket statistics to the first "light"/"squared" lookup (or save);
    # timed here once, separately, so that cost is reported and not hidden in the best-of
    from llsh_index import _engine

    t0 = time.perf_counter()
    _engine.ensure_statistics(index._tables)
    t_stats = time.perf_counter() - t0
    res = {}
    for mode in ("mean", "light", "squared"):
        gemm_q, t_score = paired(lambda: tq @ w.T, lambda: index.score(test, mode=mode), args.repeat)
        res[mode] = {"score_s": min(t_score), "gemm_s": min(gemm_q), "ratio_to_gemm": min(t_score) / min(gemm_q),
                     "median_pair_ratio": float(np.median(np.array(t_score) / np.array(gemm_q))),
                     "codes_compared": index.last_n_compared}
    st = index.stats()
    gemm_q = min(res["mean"]["gemm_s"], res["light"]["gemm_s"], res["squared"]["gemm_s"])
    t_add = min(t_adds)
    add_pair = float(np.median(np.array(t_adds) / np.array(gemm_n)))
    gemm_n = min(gemm_n)

    t_knn = float("nan")
    if not args.no_knn:
        import faiss

        sub = test[: args.knn_queries]
        knn_index = faiss.IndexFlatIP(args.d)
        norm = train / np.linalg.norm(train, axis=1, keepdims=True)
        knn_index.add(norm)
        qn = sub / np.linalg.norm(sub, axis=1, keepdims=True)
        t0 = time.perf_counter()
        knn_index.search(qn, args.knn_k)  # the time is what is compared; the scores are the demo's concern
        t_knn = (time.perf_counter() - t0) * (args.m / len(sub))
        del knn_index, norm

    out = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cores, no GPU",
        "shape": {"N": args.n, "M": args.m, "d": args.d, "b": b, "r": r},
        "gemm_queries_s": gemm_q, "gemm_train_s": gemm_n, "add_s": t_add, "add_ratio_to_gemm": t_add / gemm_n,
        "add_median_pair_ratio": add_pair,
        "deferred_stats_s": t_stats,
        "score": res, "knn_s_scaled": t_knn, "knn_over_score": t_knn / res["mean"]["score_s"],
        "raw_features_mb": train.nbytes / 2**20, "index_mb": index.memory_bytes() / 2**20,
        "peak_rss_add_delta_mb": rss_add - rss_before, "rss_data_mb": rss_data,
        "buckets_per_table": st["n_buckets"], "largest_bucket": st["largest_bucket"],
        "mean_bucket_seen_by_item": [round(v, 1) for v in st["mean_bucket_seen_by_item"]],
    }
    print(json.dumps(out, indent=1))
    print("\n| measure | value | target |\n|---|---|---|")
    m = res["mean"]
    print(f"| score() mean / GEMM(M), best of {args.repeat} each | {m['score_s']:.3f}s / {m['gemm_s']:.3f}s = "
          f"{m['ratio_to_gemm']:.2f}x (median pair {m['median_pair_ratio']:.2f}x) | <= 1.25x |")
    for mode in ("light", "squared"):
        print(f"| score() {mode} / GEMM(M) | {res[mode]['ratio_to_gemm']:.2f}x (median pair "
              f"{res[mode]['median_pair_ratio']:.2f}x) | |")
    print(f"| add() / GEMM(N) | {t_add:.3f}s / {gemm_n:.3f}s = {t_add / gemm_n:.2f}x (median pair {add_pair:.2f}x) "
          f"| <= 1.5x |")
    print(f"| deferred bucket statistics (once, first light/squared lookup) | {t_stats:.3f}s | |")
    if args.no_knn:
        print("| faiss KNN / score() mean | skipped (--no-knn) | >= 300x |")
    else:
        print(f"| faiss KNN k={args.knn_k} / score() mean | {t_knn:.1f}s / {res['mean']['score_s']:.3f}s = "
              f"{out['knn_over_score']:.0f}x | >= 300x |")
    print(f"| index / raw features | {out['index_mb']:.0f} MB / {out['raw_features_mb']:.0f} MB | |")
    print(f"| peak RSS growth during add() | {out['peak_rss_add_delta_mb']:.0f} MB | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
