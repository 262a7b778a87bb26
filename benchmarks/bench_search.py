"""search(): what the LSH candidates find, against exact search with faiss, same run.

On the Ped2 demo features (2,560-d; 1,275 training snippets of 16 normal videos, 1,990 test
snippets), for plain LSH and the demo's trained LLSH (seed 0, b 8, r 32):
  - recall@1: the share of test snippets whose exact nearest training snippet (faiss IndexFlatL2 on
    the layer-normalised features, the space the hash layers read) is search()'s first item, and
    recall@10: the share for which it is among search()'s 10;
  - the same against the exact nearest neighbour in the code space search() ranks in (the whole
    b*r code, faiss IndexFlatL2): what the candidates miss, since search() ranks them exactly there;
  - the share of test snippets whose exact code-space neighbour is among their candidates at all
    (search(k = every item)), the bound on that recall;
  - the share of test snippets with no candidate at all (they miss every table);
  - the time of search(k=10) over all test snippets against faiss's exact search on the features.
A synthetic half: N random items (d 64) and 1,000 queries near them, untrained layers, timing only;
and coarse buckets (50,000 rows round one point: every table keeps one or two buckets, as coarse
trained tables do, so every item is a candidate of every query) against exact brute force over the
whole codes (torch.cdist + topk, float64), which is then the same answer.

    python benchmarks/bench_search.py                # the Ped2 demo's features, then N = 1M
    python benchmarks/bench_search.py --items 200000
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import faiss
import numpy as np
import torch

from llsh_index import LearnableLSHIndex
from llsh_index.cli import positive_int
from llsh_index.datasets import load_ped2_demo
from llsh_index.training import DEMO_TRAINING


def layer_norm(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    return np.ascontiguousarray(x, dtype=np.float32)


def exact(train: np.ndarray, test: np.ndarray, k: int):
    flat = faiss.IndexFlatL2(train.shape[1])
    flat.add(train)
    return flat.search(test, k)


def timed(fn, repeat: int = 3):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def ped2_rows(index, x, q):
    _, ids = index.search(q, 10)
    _, nn_feat = exact(layer_norm(x), layer_norm(q), 1)
    code = lambda a: np.ascontiguousarray(index.encode(a).reshape(len(a), -1))  # noqa: E731
    _, nn_code = exact(code(x), code(q), 1)
    row = {"none": float((ids[:, 0] < 0).mean())}
    _, every = index.search(q, len(x))
    row["in_candidates"] = float((every == nn_code[:, :1]).any(1).mean())
    for name, nn in (("features", nn_feat[:, 0]), ("code", nn_code[:, 0])):
        row[f"r1_{name}"] = float((ids[:, 0] == nn).mean())
        row[f"r10_{name}"] = float((ids == nn[:, None]).any(1).mean())
    t_search, _ = timed(lambda: index.search(q, 10))
    t_flat, _ = timed(lambda: exact(x, q, 10))
    row["t_search"], row["t_flat"] = t_search, t_flat
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=positive_int, default=1_000_000, help="synthetic items")
    ap.add_argument("--queries", type=positive_int, default=1_000)
    args = ap.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.get_num_threads()} threads, faiss {faiss.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    demo = load_ped2_demo()
    names = sorted(demo.train)
    x = np.concatenate([demo.train[v] for v in names]).astype(np.float32)
    vids = np.concatenate([np.full(len(demo.train[v]), i) for i, v in enumerate(names)])
    q = np.concatenate([demo.test[v] for v in sorted(demo.test)]).astype(np.float32)
    lsh = LearnableLSHIndex(x.shape[1], seed=0).add(x)
    llsh = LearnableLSHIndex(x.shape[1], seed=0)
    llsh.fit(x, video_ids=vids, progress=False, **DEMO_TRAINING)
    llsh.add(x)
    print(f"\n## Ped2 demo features: {len(x):,} training snippets, {len(q):,} test snippets, d {x.shape[1]}")
    print("| index | no candidate | recall@1 / @10, exact NN of the features | recall@1 / @10, exact NN of "
          "the codes | code NN among the candidates | search(k=10) s | faiss flat s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name, index in (("LSH (untrained)", lsh), ("LLSH (demo training, seed 0)", llsh)):
        r = ped2_rows(index, x, q)
        print(f"| {name} | {r['none']:.1%} | {r['r1_features']:.3f} / {r['r10_features']:.3f} | "
              f"{r['r1_code']:.3f} / {r['r10_code']:.3f} | {r['in_candidates']:.3f} | {r['t_search']:.3f} | {r['t_flat']:.3f} | "
              f"{r['t_search'] / r['t_flat']:.2f} |", flush=True)

    rng = np.random.default_rng(0)
    n, d = args.items, 64
    items = rng.standard_normal((n, d), dtype=np.float32)
    near = items[rng.choice(n, args.queries, replace=False)] + 0.05 * rng.standard_normal((args.queries, d),
                                                                                         dtype=np.float32)
    index = LearnableLSHIndex(d, seed=0)
    for i in range(0, n, 200_000):
        index.add(items[i:i + 200_000])
    t_search, (_, ids) = timed(lambda: index.search(near, 10))
    t_flat, (_, nn) = timed(lambda: exact(items, near, 1))
    print(f"\n## {n:,} random items (d {d}, b 8, r 32, untrained), {args.queries:,} queries at 0.05 from an item")
    print("| search(k=10) s | faiss flat (exact) s | ratio | recall@1 of the exact NN |")
    print("|---|---|---|---|")
    print(f"| {t_search:.3f} | {t_flat:.3f} | {t_search / t_flat:.3f} | {(ids[:, 0] == nn[:, 0]).mean():.3f} |")

    n, m = 50_000, 200
    centre = rng.standard_normal(d).astype(np.float32)
    rows = (centre + 1e-3 * rng.standard_normal((n, d))).astype(np.float32)
    qs = (centre + 1e-3 * rng.standard_normal((m, d))).astype(np.float32)
    coarse = LearnableLSHIndex(d, seed=0).add(rows)
    t_search, (_, ids) = timed(lambda: coarse.search(qs, 10))
    cx = torch.from_numpy(coarse.encode(rows).reshape(n, -1)).double()
    cq = torch.from_numpy(coarse.encode(qs).reshape(m, -1)).double()
    t_brute, (_, nn) = timed(lambda: torch.cdist(cq, cx).topk(10, largest=False))
    print(f"\n## coarse buckets: {n:,} rows round one point, {m} queries, buckets per table "
          f"{np.diff(coarse._tables['table_start']).tolist()}")
    print("| search(k=10) s | brute force (cdist + topk) s | ratio | recall@1 of the brute force's NN |")
    print("|---|---|---|---|")
    print(f"| {t_search:.3f} | {t_brute:.3f} | {t_search / t_brute:.2f} | {(ids[:, 0] == nn[:, 0].numpy()).mean():.3f} |")


if __name__ == "__main__":
    main()
