"""load() against load(mmap=True) of a large index, CPU: load time, memory, and the first scores.

Builds an index of --items random rows (d 64, b 8, r 32 by default: 1M items hold 1 GB of float32
codes), saves it to a temporary folder, then loads it in fresh child processes, normal and mapped in
turn (--repeat times each), so every load starts from the same resident size and the file is in the
page cache for both (it was just written).  Each child reports the load time, how much its resident
size grew (VmRSS of /proc/self/status, and its private part RssAnon: the mapped codes are file pages,
shared with every process mapping the file, not private memory), and the time of a first and a
second score() of --queries rows (half of them training rows, which hit their buckets).  The scores
of the two loads are checked equal.

    python benchmarks/bench_load.py                       # 1M items, 1,000 queries, 5 repeats
    python benchmarks/bench_load.py --items 200000 --repeat 1
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from llsh_index.cli import positive_int
from table2 import _proc_status  # /proc/self/status in bytes (the benchmarks' folder is on sys.path)


def child(path: str, queries_path: str, mmap: bool) -> None:
    """One load and two scores in this fresh process; prints a JSON line of the figures."""
    from llsh_index import LearnableLSHIndex

    queries = np.load(queries_path)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size: the peak of the load alone
    except OSError:
        pass
    before = _proc_status()
    t0 = time.perf_counter()
    index = LearnableLSHIndex.load(path, mmap=mmap)
    load_s = time.perf_counter() - t0
    loaded = _proc_status()
    times = []
    for _ in range(2):  # the first one also builds the lookup directory from the keys
        t0 = time.perf_counter()
        scores = index.score(queries)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"load_s": load_s, "score1_s": times[0], "score2_s": times[1],
                      "rss": loaded.get("VmRSS", 0) - before.get("VmRSS", 0),
                      "peak": loaded.get("VmHWM", 0) - before.get("VmRSS", 0),
                      "anon": loaded.get("RssAnon", 0) - before.get("RssAnon", 0),
                      "file": loaded.get("RssFile", 0) - before.get("RssFile", 0),
                      "scores": hashlib.sha256(scores.tobytes()).hexdigest()}))


def run_child(path: str, queries_path: str, mmap: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", path, queries_path, str(int(mmap))],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=positive_int, default=1_000_000)
    ap.add_argument("--dim", type=positive_int, default=64)
    ap.add_argument("--n-tables", type=positive_int, default=8)
    ap.add_argument("--n-bits", type=positive_int, default=32)
    ap.add_argument("--queries", type=positive_int, default=1000)
    ap.add_argument("--repeat", type=positive_int, default=5, help="child processes per kind of load (medians reported)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.child[2] == "1")

    from llsh_index import LearnableLSHIndex

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        index = LearnableLSHIndex(args.dim, args.n_tables, args.n_bits, seed=0)
        x = rng.standard_normal((args.items, args.dim), dtype=np.float32)
        t0 = time.perf_counter()
        for i in range(0, args.items, 200_000):
            index.add(x[i:i + 200_000])
        build_s = time.perf_counter() - t0
        half = args.queries // 2
        queries = np.concatenate([x[rng.choice(args.items, half, replace=False)],
                                  rng.standard_normal((args.queries - half, args.dim), dtype=np.float32)])
        path, queries_path = os.path.join(tmp, "index.llsh"), os.path.join(tmp, "queries.npy")
        np.save(queries_path, queries)
        size = index.save(path)
        codes_mb = index._tables["codes"].nbytes / 2 ** 20
        del index, x
        runs = {False: [], True: []}
        for _ in range(args.repeat):
            for mmap in (False, True):  # in turn: drifts of the machine hit both alike
                runs[mmap].append(run_child(path, queries_path, mmap))
        if len({r["scores"] for rs in runs.values() for r in rs}) != 1:
            raise SystemExit("the scores of load() and load(mmap=True) differ")

    def med(mmap, key):
        return float(np.median([r[key] for r in runs[mmap]]))

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; {args.items:,} items, d {args.dim}, b {args.n_tables}, r {args.n_bits}: file "
          f"{size / 2 ** 20:,.0f} MiB ({codes_mb:,.0f} MiB of codes), built in {build_s:.1f} s; median of "
          f"{args.repeat} fresh processes per load, scores equal")
    print("| | load() | load(mmap=True) | ratio mmap / normal |")
    print("|---|---|---|---|")
    rows = [("load time", "load_s", 1, "s", ".2f"),
            ("resident size growth (VmRSS)", "rss", 2 ** -20, "MiB", ",.0f"),
            ("of which private (RssAnon)", "anon", 2 ** -20, "MiB", ",.0f"),
            ("of which file pages, shared (RssFile)", "file", 2 ** -20, "MiB", ",.0f"),
            ("peak resident size growth during load (VmHWM)", "peak", 2 ** -20, "MiB", ",.0f"),
            (f"first score() of {args.queries:,} queries", "score1_s", 1e3, "ms", ".1f"),
            (f"second score() of {args.queries:,} queries", "score2_s", 1e3, "ms", ".1f")]
    for label, key, scale, unit, fmt in rows:
        a, b = med(False, key), med(True, key)
        ratio = f"{b / a:.3f}" if a > 0 else "-"
        print(f"| {label} | {format(a * scale, fmt)} {unit} | {format(b * scale, fmt)} {unit} | {ratio} |")


if __name__ == "__main__":
    main()
