"""Weak scaling of the Ray-distributed index (llsh_index.distributed) against the local engine.

Fixed rows per worker (default 50,000 x d=256, b=8, r=32); for 1, 2 and 4 local Ray workers, in one
run, on the same data:
  local   one process, LearnableLSHIndex.add() of all k parts, score() of the queries
  ray     build_distributed() over k .npy paths (each worker memory-maps and hashes its part),
          DistributedIndex.score() of the same queries (partial sums reduced on the driver)
Both are timed after a warm-up call; the distributed scores are checked against the local ones.
The 1-worker ratio is the overhead of the distributed path (target <= 1.3x).  Then a paper model of
100 million snippets over 16 GPUs from the measured per-shard rates.

    python benchmarks/scale.py                 # ~2-4 min on 2 cores
    python benchmarks/scale.py --quick         # seconds
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llsh_index import LearnableLSHIndex  # noqa: E402


def clustered(rng, n, d, centres):
    return (centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)


def best_of(fn, repeat):
    out, best = None, float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000, help="rows per worker")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--n-tables", type=int, default=8)
    ap.add_argument("--n-bits", type=int, default=32)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    if a.quick:
        a.rows, a.queries, a.repeat = 5_000, 2_000, 1
    import ray

    cores = os.cpu_count()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    from llsh_index.distributed import build_distributed

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((64, a.dim)).astype(np.float32) * 2
    workers = [int(w) for w in a.workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="llsh_scale_"))
    paths = []
    for i in range(max(workers)):
        paths.append(str(tmp / f"part{i}.npy"))
        np.save(paths[-1], clustered(rng, a.rows, a.dim, centres))
    q = np.concatenate([clustered(rng, a.queries // 2, a.dim, centres),
                        (rng.standard_normal((a.queries - a.queries // 2, a.dim)) * 3).astype(np.float32)])
    layers = LearnableLSHIndex(a.dim, n_tables=a.n_tables, n_bits=a.n_bits, seed=0)

    rows = []
    for k in workers:
        data = np.concatenate([np.load(p) for p in paths[:k]])
        # local engine: one process, all cores
        layers.empty_like().add(data[:1000])  # warm-up
        build_local, local = best_of(lambda: layers.empty_like().add(data), a.repeat)
        local.score(q[:1000])
        score_local, s_local = best_of(lambda: local.score(q), a.repeat)
        local = data = None  # free before the Ray run
        # Ray: k actors; CPUs split evenly (k=4 on 2 cores oversubscribes: 0.5 CPU, 1 thread each)
        cpus = cores / k
        threads = max(1, int(cpus))
        dist = build_distributed(layers, paths[:1], num_cpus_per_shard=cpus, n_threads=threads)  # warm-up
        dist.score(q[:1000])
        dist.shutdown()
        builds, inner = [], []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            dist = build_distributed(layers, paths[:k], num_cpus_per_shard=cpus, n_threads=threads)
            builds.append(time.perf_counter() - t0)
            inner.append(max(dist.build_seconds))  # slowest worker's load + hash + build, no actor start
            if len(builds) < a.repeat:
                dist.shutdown()
        build_ray, build_shard = min(builds), min(inner)
        dist.score(q[:1000])
        score_ray, s_ray = best_of(lambda: dist.score(q), a.repeat)
        shard_bytes = dist.memory_bytes()
        dist.shutdown()
        err = float(np.abs(s_ray - s_local).max())
        rows.append(dict(workers=k, n=k * a.rows, build_local_s=build_local, build_ray_s=build_ray,
                         build_shard_s=build_shard, build_shard_ratio=build_shard / build_local,
                         score_local_s=score_local, score_ray_s=score_ray,
                         score_local_qps=a.queries / score_local, score_ray_qps=a.queries / score_ray,
                         build_ratio=build_ray / build_local, score_ratio=score_ray / score_local,
                         max_abs_diff=err, shard_bytes=shard_bytes[0]))
        print(json.dumps(rows[-1]), flush=True)
    ray.shutdown()
    for p in paths:
        os.remove(p)
    os.rmdir(tmp)

    # ------------------------------------------------------------------ paper model: 1e8 items, 16 shards
    b, r, d = a.n_tables, a.n_bits, a.dim
    one = rows[0]
    n_total, shards, batch = 100_000_000, 16, 10_000
    per_shard = n_total // shards
    per_item = b * r * 4 + b * 8 + b * 8  # codes (float32) + ids (int64) + keys (uint64, upper bound: one per row)
    # the engine also keeps per-bucket statistics; upper bound (every bucket a singleton):
    # + offsets int64 + bucket_sum r float64 + bucket_sqnorm float64, per table
    engine_per_item = per_item + b * (8 + 8 * r + 8)
    stats_per_item = b * (8 + 8 * r + 8 + 8)  # statistics-only upper bound: key, r float64 sums, sqnorm, offset
    build_rate = a.rows / one["build_shard_s"]     # rows/s of one shard worker (all cores here), measured
    score_rate = a.queries / one["score_ray_s"]    # queries/s of one shard of `rows` items, measured
    q_bytes = batch * d * 4 * shards               # queries broadcast to every shard
    back_mean = batch * b * (8 + 8) * shards       # count int64 + sum float64 per (query, table)
    back_light = batch * b * (8 + 8 * r) * shards + batch * b * r * 4
    model = dict(n_total=n_total, shards=shards, per_shard=per_shard, bytes_per_item=per_item,
                 shard_gb=per_shard * per_item / 1e9,
                 engine_bytes_per_item_upper=engine_per_item, shard_gb_engine_upper=per_shard * engine_per_item / 1e9,
                 shard_stats_gb_upper=per_shard * stats_per_item / 1e9,
                 measured_shard_bytes_per_item=one["shard_bytes"] / a.rows,
                 batch=batch, query_broadcast_mb=q_bytes / 1e6, partials_back_mb_mean=back_mean / 1e6,
                 partials_back_mb_light=back_light / 1e6,
                 build_s_at_measured_rate=per_shard / build_rate,
                 score_s_per_batch_at_measured_rate=batch / score_rate,
                 net_s_per_batch_10gbe=(q_bytes + back_mean) / 1.25e9,
                 net_s_per_batch_100gbe=(q_bytes + back_mean) / 12.5e9)
    out = dict(machine=f"{platform.machine()} {cores} cores, {platform.python_version()}",
               date=time.strftime("%Y-%m-%d"), rows_per_worker=a.rows, dim=d, queries=a.queries, n_tables=b,
               n_bits=r, results=rows, model=model)
    print(json.dumps(model, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
