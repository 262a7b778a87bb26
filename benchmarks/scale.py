"""Weak scaling of the Ray-distributed index (llsh_index.distributed) against the local engine.

Fixed rows per worker (default 50,000 x d=256, b=8, r=32); for 1, 2 and 4 local Ray workers, in one
run, on the same data:
  local       one process, LearnableLSHIndex.add() of all k parts, score() of the queries
  ray cold    build_distributed() over k .npy paths on fresh actors (wall time, actor start-up included)
  ray warm    the same build on the warm actors of a ShardPool (started once, reused: the steady state)
  ray score   DistributedIndex.score() of the same queries: the driver hashes them once, the shards
              get the codes + keys and answer partial sums, reduced on the driver
Local and Ray are timed in alternation after a warm-up (best of --repeat builds, --score-repeat
scores), so both see the same load from other jobs; the distributed scores are checked against the
local ones.
The 1-worker ratios (warm build, score) are the overhead of the distributed path (target <= 1.3x).
Then a paper model of 100 million snippets over 16 GPUs from the measured per-shard rates.

    python benchmarks/scale.py                 # ~3-5 min on 2 cores
    python benchmarks/scale.py --quick         # under a minute
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
from llsh_index.cli import int_list, output_file, positive_int  # noqa: E402


def clustered(rng, n, d, centres):
    return (centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)


def best_of(fn, repeat):
    out, best = None, float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def markdown(out) -> str:
    """The tables of RESULTS.md's "Scale (Ray)" section, from this run's results."""
    m, rows = out["model"], out["results"]
    lines = [f"`{out['command'].strip()}`, {out['date']}, {out['machine']}, Ray {out['ray']} local "
             f"(`ray.init(num_cpus={out['cores']})`), load average {out['load_avg_1min']['start']:.1f} at the start "
             f"and {out['load_avg_1min']['end']:.1f} at the end (1 min average, on {out['cores']} cores). Weak scaling: "
             f"{out['rows_per_worker']:,} rows per worker, d={out['dim']}, b={out['n_tables']}, r={out['n_bits']}, "
             f"{out['queries']:,} queries, mode \"mean\", after a warm-up; best of {out['repeat']} builds and "
             f"{out['score_repeat']} scores, local and Ray timed in alternation.", "",
             "| workers | N | local build s | ray cold build s (fresh actors) | pool start s | ray warm build s (pool) "
             "| warm / local | in-worker s | local score s | ray score s | ray / local score | ray q/s | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['n']:,} | {r['build_local_s']:.3f} | {r['build_ray_cold_s']:.2f} | "
                     f"{r['pool_start_s']:.2f} | {r['build_ray_s']:.3f} | {r['build_ratio']:.2f}x | "
                     f"{r['build_shard_s']:.3f} | {r['score_local_s']:.3f} | {r['score_ray_s']:.3f} | "
                     f"{r['score_ratio']:.2f}x | {r['score_ray_qps']:,.0f} | {r['max_abs_diff']:g} |")
    one = rows[0]
    ok = lambda v: "met" if v <= 1.3 else "not met"  # noqa: E731
    lines += ["", f"**Overhead at one worker** (target <= 1.3x the local engine): build on a warm pool "
              f"{one['build_ratio']:.2f}x ({ok(one['build_ratio'])}), score {one['score_ratio']:.2f}x "
              f"({ok(one['score_ratio'])}); a cold build on fresh actors {one['build_cold_ratio']:.1f}x.", "",
              f"**Paper model: {m['n_total']:,} snippets over {m['shards']} GPUs** ({m['per_shard']:,} items per "
              f"shard, b={out['n_tables']}, r={out['n_bits']}, query batches of {m['batch']:,}):", "",
              "| quantity | formula | value |", "|---|---|---|",
              f"| bytes per item (codes + ids + keys) | b·r·4 + b·8 + b·8 | {m['bytes_per_item']:,} B -> "
              f"{m['shard_gb']:.1f} GB per shard |",
              f"| engine upper bound (+ offsets, float64 bucket sums, sq. norms, all buckets singletons) | "
              f"+ b·(8 + 8r + 8) | {m['engine_bytes_per_item_upper']:,} B -> {m['shard_gb_engine_upper']:.1f} GB per shard |",
              f"| measured at {out['rows_per_worker']:,} items per shard | memory_bytes() / n | "
              f"{m['measured_shard_bytes_per_item']:,.0f} B |",
              f"| statistics only (`store_codes=False`), upper bound | b·(8 + 8r + 8 + 8) | "
              f"{m['shard_stats_gb_upper']:.1f} GB per shard |",
              f"| query codes + keys sent per batch (hashed once) | batch·(b·r·4 + b·8)·shards | "
              f"{m['query_broadcast_mb']:.1f} MB |",
              "| features sent per batch instead (before) | batch·d·4·shards | " +
              ", ".join(f"{v:,.0f} MB at {k}" for k, v in m["feature_broadcast_mb"].items()) + " |",
              f"| partial sums back per batch, mean/squared | batch·b·(8+8)·shards | {m['partials_back_mb_mean']:.2f} MB |",
              f"| partial sums back per batch, light | batch·b·(8+8r)·shards | {m['partials_back_mb_light']:.1f} MB |",
              f"| network time per batch, mean/squared | (codes + partial sums) / bandwidth | "
              f"{m['net_s_per_batch_10gbe']:.3f} s at 10 GbE, {m['net_s_per_batch_100gbe']:.4f} s at 100 GbE |",
              f"| build time (shards in parallel) | per_shard / measured in-worker rate | "
              f"{m['build_s_at_measured_rate']:.0f} s + reading the data |",
              f"| score time per batch | batch / measured 1-worker rate | {m['score_s_per_batch_at_measured_rate']:.3f} s |"]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=positive_int, default=50_000, help="rows per worker")
    ap.add_argument("--dim", type=positive_int, default=256)
    ap.add_argument("--queries", type=positive_int, default=20_000)
    ap.add_argument("--n-tables", type=positive_int, default=8)
    ap.add_argument("--n-bits", type=positive_int, default=32)
    ap.add_argument("--workers", type=int_list(1), default=[1, 2, 4])
    ap.add_argument("--repeat", type=positive_int, default=2, help="builds timed per configuration")
    ap.add_argument("--score-repeat", type=positive_int, default=5, help="scores timed per configuration")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=output_file, help="write the results here")
    ap.add_argument("--markdown", type=output_file, help="write the RESULTS.md tables here")
    a = ap.parse_args()
    if a.quick:
        a.rows, a.queries, a.repeat, a.score_repeat = 5_000, 2_000, 1, 2
    import ray

    cores = os.cpu_count()
    load_start = os.getloadavg()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    from llsh_index.distributed import ShardPool, build_distributed

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((64, a.dim)).astype(np.float32) * 2
    workers = a.workers
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
        layers.empty_like().add(data[:1000])  # warm-up of the local engine
        # Ray: k actors; CPUs split evenly (k=4 on 2 cores oversubscribes: 0.5 CPU, 1 thread each)
        cpus = cores / k
        threads = max(1, int(cpus))
        opts = dict(num_cpus_per_shard=cpus, n_threads=threads)
        # cold: fresh actors per build (a new process each, importing torch).  Measured before the
        # pool exists: the pool's actors hold their CPUs for as long as they live.
        dist = build_distributed(layers, paths[:1], **opts)  # warm-up of Ray itself
        dist.shutdown()
        cold = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            dist = build_distributed(layers, paths[:k], **opts)
            cold.append(time.perf_counter() - t0)
            dist.shutdown()
        t0 = time.perf_counter()
        pool = ShardPool(k, **opts)
        pool_start = time.perf_counter() - t0
        dist = build_distributed(layers, paths[:k], pool=pool)  # warm-up of the pool's actors
        dist.score(q[:1000])
        dist.shutdown()
        # local (one process, all cores) and warm Ray builds, then scores, timed in alternation so
        # that both see the same load from other jobs; best of each
        local_builds, builds, inner, local = [], [], [], None
        for i in range(a.repeat):
            t0 = time.perf_counter()
            local = layers.empty_like().add(data)
            local_builds.append(time.perf_counter() - t0)
            if i:
                dist.shutdown()  # hands the actors back for the next build
            t0 = time.perf_counter()
            dist = build_distributed(layers, paths[:k], pool=pool)
            builds.append(time.perf_counter() - t0)
            inner.append(max(dist.build_seconds))  # slowest worker's load + hash + build
        build_local, build_ray, build_shard = min(local_builds), min(builds), min(inner)
        local.score(q[:1000])
        dist.score(q[:1000])
        score_local = score_ray = float("inf")
        for _ in range(a.score_repeat):
            t, s_local = best_of(lambda: local.score(q), 1)
            score_local = min(score_local, t)
            t, s_ray = best_of(lambda: dist.score(q), 1)
            score_ray = min(score_ray, t)
        shard_bytes = dist.memory_bytes()
        dist.shutdown()
        pool.shutdown()
        local = data = None
        err = float(np.abs(s_ray - s_local).max())
        rows.append(dict(workers=k, n=k * a.rows, build_local_s=build_local, build_ray_cold_s=min(cold),
                         pool_start_s=pool_start, build_ray_s=build_ray, build_shard_s=build_shard,
                         build_ratio=build_ray / build_local, build_cold_ratio=min(cold) / build_local,
                         build_shard_ratio=build_shard / build_local,
                         score_local_s=score_local, score_ray_s=score_ray,
                         score_local_qps=a.queries / score_local, score_ray_qps=a.queries / score_ray,
                         score_ratio=score_ray / score_local, max_abs_diff=err, shard_bytes=shard_bytes[0]))
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
    q_bytes = batch * (b * r * 4 + b * 8) * shards  # query codes + keys (hashed once) to every shard
    # what broadcasting the features would cost instead: at this run's d, at the package's video
    # features (2560) and at the paper's ShanghaiTech features (4 x 2304 = 9216)
    q_bytes_features = {dd: batch * dd * 4 * shards for dd in sorted({d, 2560, 9216})}
    back_mean = batch * b * (8 + 8) * shards        # count int64 + sum float64 per (query, table)
    back_light = batch * b * (8 + 8 * r) * shards   # count + r float64 code sums (the driver has the codes)
    model = dict(n_total=n_total, shards=shards, per_shard=per_shard, bytes_per_item=per_item,
                 shard_gb=per_shard * per_item / 1e9,
                 engine_bytes_per_item_upper=engine_per_item, shard_gb_engine_upper=per_shard * engine_per_item / 1e9,
                 shard_stats_gb_upper=per_shard * stats_per_item / 1e9,
                 measured_shard_bytes_per_item=one["shard_bytes"] / a.rows,
                 batch=batch, query_broadcast_mb=q_bytes / 1e6,
                 feature_broadcast_mb={f"d={dd}": v / 1e6 for dd, v in q_bytes_features.items()},
                 partials_back_mb_mean=back_mean / 1e6,
                 partials_back_mb_light=back_light / 1e6,
                 build_s_at_measured_rate=per_shard / build_rate,
                 score_s_per_batch_at_measured_rate=batch / score_rate,
                 net_s_per_batch_10gbe=(q_bytes + back_mean) / 1.25e9,
                 net_s_per_batch_100gbe=(q_bytes + back_mean) / 12.5e9)
    out = dict(command="python benchmarks/scale.py " + " ".join(sys.argv[1:]),
               machine=f"{platform.machine()} {cores} cores, {platform.python_version()}",
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               load_avg_1min=dict(start=load_start[0], end=os.getloadavg()[0]), cores=cores, ray=ray.__version__,
               repeat=a.repeat, score_repeat=a.score_repeat, rows_per_worker=a.rows, dim=d, queries=a.queries, n_tables=b,
               n_bits=r, results=rows, model=model)
    print(json.dumps(model, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    if a.markdown:
        Path(a.markdown).write_text(markdown(out))


if __name__ == "__main__":
    main()
