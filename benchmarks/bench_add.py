"""The cost of a small add() to a large index, CPU: merging the batch into the sorted tables against
sorting every row again, measured in the same run.

add() on the CPU hashes the batch, sorts it alone and merges it into the index's sorted tables
(_engine.merge_tables: O(total) copies, no sort of the index).  The baseline is what add() did before
(and the GPU still does): the index's rows and the batch's concatenated and the whole tables built
again (_engine.build_tables: radix sort, permutation, segmentation).  Both give the same tables,
checked here on every size; the median wall time of each, alternating calls, and their ratio.

Second table: LearnableLSHIndex.merge_all of S shards (as ShardedIndex.gather() and `llsh-index merge`),
which merges neighbours pairwise level by level, against merging them one after another into one index
(merge() in turn), same run, same tables checked.

Third table: remove_ids() of the oldest share of the items (a sliding window of normal video), which
compacts the sorted tables with masks and prefix sums, against what a user had to do without it:
a new index built by add() from the remaining rows' features.  Same run, same tables checked.

    python benchmarks/bench_add.py                          # d 64, b 8, r 32; 10k, 100k, 300k, 1M items
    python benchmarks/bench_add.py --sizes 10000,100000 --batch 1000 --shards 2,8
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from llsh_index import LearnableLSHIndex, _engine
from llsh_index.cli import int_list, positive_int
from llsh_index.index import _rows_of
from table2 import _proc_status  # /proc/self/status in bytes (the benchmarks' folder is on sys.path)


def rebuild_tables(index, rows):
    """The previous add(): old rows and the batch's concatenated, then one build of all of them."""
    old, b, r = index._tables, index.n_tables, index.n_bits
    codes, keys = index.hash_queries(rows)
    n_old, n = int(old["n_items"]), len(rows)
    all_keys = np.concatenate([_rows_of(old, b), np.ascontiguousarray(keys.T)], axis=1)
    all_codes = np.concatenate([old["codes"].reshape(b, n_old, r), codes.transpose(1, 0, 2)], axis=1)
    ids = np.concatenate([old["ids"].reshape(b, n_old),
                          np.broadcast_to(np.arange(n_old, n_old + n, dtype=np.int64), (b, n))], axis=1)
    return _engine.build_tables(all_keys, all_codes, ids, keep_codes=True, n_threads=index.n_threads,
                                in_place=True, with_stats=False)


def timed(fn):
    """(seconds, transient memory in MiB above the resident size before the call, result); the
    transient memory is Linux's peak resident size (VmHWM, reset through clear_refs), 0 elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        before = _proc_status().get("VmRSS")
    except OSError:
        before = None
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = 0.0 if before is None else (_proc_status()["VmHWM"] - before) / 2 ** 20
    return seconds, peak, out


def alternate(repeat: int, ours, before, what: str):
    """Median seconds of ours() and before() (each returns an index), called in turn `repeat` times,
    after checking each time that both built the same tables."""
    ours_s, before_s = [], []
    for _ in range(repeat):
        t, _, want = timed(before)
        before_s.append(t)
        t, _, got = timed(ours)
        ours_s.append(t)
        for k in ("keys", "table_start", "offsets", "codes", "ids"):
            if not np.array_equal(got._tables[k], want._tables[k]):
                raise SystemExit(f"{what} differ in {k}")
        del got, want
    return float(np.median(ours_s)), float(np.median(before_s))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=positive_int, default=64)
    ap.add_argument("--sizes", type=int_list(1), default=[10_000, 100_000, 300_000, 1_000_000],
                    help="items in the index before the adds (comma-separated)")
    ap.add_argument("--batch", type=positive_int, default=100, help="rows per add()")
    ap.add_argument("--repeat", type=positive_int, default=5, help="timed adds per method and size")
    ap.add_argument("--shards", type=int_list(2), default=[2, 4, 8, 16, 32],
                    help="shard counts for the merge_all table (comma-separated)")
    ap.add_argument("--shard-items", type=positive_int, default=1_000_000, help="items over all shards")
    ap.add_argument("--remove", type=str, default="0.01,0.1,0.5",
                    help="shares of the --shard-items items removed by remove_ids (comma-separated)")
    ap.add_argument("--n-tables", type=positive_int, default=8)
    ap.add_argument("--n-bits", type=positive_int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the hashing of 100 rows is not what is measured
    rng = np.random.default_rng(0)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; d {args.dim}, b {args.n_tables}, "
          f"r {args.n_bits}, {args.batch} rows per add, median of {args.repeat}")
    print("| items | add() (merge) | rebuild (before) | ratio merge / rebuild | transient MiB, merge / rebuild |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        index = LearnableLSHIndex(args.dim, args.n_tables, args.n_bits, seed=0)
        for i in range(0, size, 200_000):
            index.add(rng.standard_normal((min(200_000, size - i), args.dim), dtype=np.float32))
        merge_s, rebuild_s, merge_mb, rebuild_mb = [], [], [], []
        for _ in range(args.repeat):
            rows = rng.standard_normal((args.batch, args.dim), dtype=np.float32)
            t, mb, rebuilt = timed(lambda: rebuild_tables(index, rows))
            rebuild_s.append(t)
            rebuild_mb.append(mb)
            old = index._tables
            t, mb, _ = timed(lambda: index.add(rows))
            del old  # held through the call as rebuild_tables held it: the same tables in memory for both
            merge_s.append(t)
            merge_mb.append(mb)
            for k in ("keys", "table_start", "offsets", "codes", "ids"):  # the same tables either way
                if not np.array_equal(index._tables[k], rebuilt[k]):
                    raise SystemExit(f"{size} items: merged and rebuilt tables differ in {k}")
            del rebuilt
        m, r_ = float(np.median(merge_s)), float(np.median(rebuild_s))
        print(f"| {size:,} | {1e3 * m:.1f} ms | {1e3 * r_:.1f} ms | {m / r_:.3f} | "
              f"{np.median(merge_mb):,.0f} / {np.median(rebuild_mb):,.0f} |", flush=True)
        index = None  # freed before the next size (not del: the lambdas above name it)

    print(f"\n# merge_all of S shards, {args.shard_items:,} items in all, median of {args.repeat}")
    print("| shards | merge_all (pairwise levels) | merge() in turn | ratio |")
    print("|---|---|---|---|")
    x = rng.standard_normal((args.shard_items, args.dim), dtype=np.float32)
    base = LearnableLSHIndex(args.dim, args.n_tables, args.n_bits, seed=0)
    base.add(x[:1])
    for n_shards in args.shards:
        shards = [base.empty_like().add(part) for part in np.array_split(x, n_shards)]

        def in_turn():
            out = shards[0].empty_like()
            for s in shards:
                out.merge(s)
            return out

        a, b_ = alternate(args.repeat, lambda: LearnableLSHIndex.merge_all(shards), in_turn,
                          f"{n_shards} shards: the two merges' tables")
        print(f"| {n_shards} | {a:.2f} s | {b_:.2f} s | {a / b_:.3f} |", flush=True)
        shards = None  # freed before the next count (not del: in_turn names it)

    print(f"\n# remove_ids of the oldest items, {args.shard_items:,} items, median of {args.repeat}")
    print("| removed | remove_ids | add() of the rest into a new index | ratio |")
    print("|---|---|---|---|")
    full = base.empty_like().add(x)
    for share in [float(v) for v in args.remove.split(",")]:
        k = int(round(share * len(x)))

        def remove():
            window = base.empty_like()
            window._tables = full._tables  # tables are never modified in place: sharing them is safe
            window.remove_ids(np.arange(k))
            return window

        a, b_ = alternate(args.repeat, remove, lambda: base.empty_like().add(x[k:]),
                          f"remove_ids of {k} items and the rebuild: the tables")
        print(f"| {k:,} ({share:.0%}) | {a:.2f} s | {b_:.2f} s | {a / b_:.3f} |", flush=True)


if __name__ == "__main__":
    main()
