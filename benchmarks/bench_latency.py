"""score() latency for small batches (online scoring: a few snippets at a time), CPU.

Per batch size M, the median wall time of index.score(M rows) over --repeat calls, against the bare
hashing arithmetic of the same rows measured in the same run: torch's LayerNorm and one GEMM with
the (b*r, d) weight (no sigmoid, keys or lookup), the floor any implementation pays.  The ratio is
the overhead of everything else: input checks, padding small batches to 16 rows (so a row's code
never depends on its batch), the native epilogue and the lookup.

    python benchmarks/bench_latency.py                 # d 2560 (the Ped2 demo's), N 20,000, b 8, r 32
    python benchmarks/bench_latency.py --dim 9216      # the paper's feature size
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional as F

from llsh_index import LearnableLSHIndex
from llsh_index.cli import int_list, positive_int


def median_ms(fn, repeat):
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=positive_int, default=2560)
    ap.add_argument("--n", type=positive_int, default=20000, help="indexed rows")
    ap.add_argument("--n-tables", type=positive_int, default=8)
    ap.add_argument("--n-bits", type=positive_int, default=32)
    ap.add_argument("--batches", type=int_list(1), default=[1, 4, 16, 64, 256])
    ap.add_argument("--repeat", type=positive_int, default=300)
    ap.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    index = LearnableLSHIndex(args.dim, n_tables=args.n_tables, n_bits=args.n_bits).add(x)
    weight = index.encoder.weight.detach()
    print(f"d {args.dim}, N {args.n}, b {args.n_tables}, r {args.n_bits}, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeat} calls\n")
    print("| batch | score() ms | per row us | LayerNorm + GEMM ms | ratio |")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        for m in args.batches:
            q = x[:m].copy()
            qt = torch.from_numpy(q)
            t_score = median_ms(lambda: index.score(q), args.repeat)
            t_bare = median_ms(lambda: F.linear(F.layer_norm(qt, (args.dim,)), weight), args.repeat)
            print(f"| {m} | {t_score:.3f} | {1e3 * t_score / m:.1f} | {t_bare:.3f} | {t_score / t_bare:.1f}x |")


if __name__ == "__main__":
    main()
