"""ShardedIndex on the GPUs of one host against one index on one GPU (a short run for gpu_check.sh).

Clustered float32 features generated on the first device; one index on cuda:0, then a
ShardedIndex with --shards-per-gpu shards on every visible GPU (two shards on one GPU on a
single-GPU machine: the path is exercised, not sped up).  Times after a warm-up, best of
--repeats; the sharded scores are checked against the single index's (they must agree to 1e-6,
both being the CUDA engine on the same items).

    python benchmarks/bench_sharded.py                       # ~10-20 s on an H200
    python benchmarks/bench_sharded.py --device cpu --quick   # smoke test on the CPU
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from llsh_index import LearnableLSHIndex, ShardedIndex  # noqa: E402
from llsh_index.cli import nonnegative_int, positive_int  # noqa: E402


def sync_all():
    for i in range(torch.cuda.device_count()):
        torch.cuda.synchronize(i)


def best_of(fn, repeats, cuda):
    out, best = None, float("inf")
    for _ in range(repeats):
        if cuda:
            sync_all()
        t0 = time.perf_counter()
        out = fn()
        if cuda:
            sync_all()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n-train", type=positive_int, default=1_000_000)
    ap.add_argument("--n-test", type=positive_int, default=100_000)
    ap.add_argument("--dim", type=positive_int, default=1024)
    ap.add_argument("--tables", type=positive_int, default=8)
    ap.add_argument("--bits", type=positive_int, default=32)
    ap.add_argument("--shards-per-gpu", type=nonnegative_int, default=0, help="default: 2 on one GPU, else 1")
    ap.add_argument("--repeats", type=positive_int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.quick:
        a.n_train, a.n_test, a.dim, a.repeats = 20_000, 5_000, 128, 1
    cuda = a.device.startswith("cuda")
    dev = "cuda:0" if cuda else "cpu"
    n_gpus = torch.cuda.device_count() if cuda else 0
    per = a.shards_per_gpu or (2 if n_gpus <= 1 else 1)
    devices = [f"cuda:{i}" for i in range(n_gpus)] if cuda else ["cpu"]
    g = torch.Generator(device=dev).manual_seed(0)
    centres = torch.randn((256, a.dim), device=dev, generator=g) * 2
    x = centres[torch.randint(0, 256, (a.n_train,), device=dev, generator=g)]
    x += 0.5 * torch.randn(x.shape, device=dev, generator=g)
    q = torch.cat([centres[torch.randint(0, 256, (a.n_test // 2,), device=dev, generator=g)]
                   + 0.5 * torch.randn((a.n_test // 2, a.dim), device=dev, generator=g),
                   3 * torch.randn((a.n_test - a.n_test // 2, a.dim), device=dev, generator=g)])
    if not cuda:
        x, q = x.numpy(), q.numpy()
    # One hashing chunk size that divides every shard's rows and the query rounds: every GEMM then
    # has the same shape in both runs, so the codes are bit-identical and the scores comparable to 1e-6
    # (cuBLAS may pick another kernel, with another rounding, for another number of rows).
    chunk = a.n_train // (per * len(devices) * 10) or 1
    layers = LearnableLSHIndex(a.dim, n_tables=a.tables, n_bits=a.bits, seed=0, batch_size=chunk)
    res = dict(device=torch.cuda.get_device_name(0) if cuda else "cpu", n_gpus=n_gpus, devices=devices,
               shards=per * len(devices), n_train=a.n_train, n_test=a.n_test, dim=a.dim, b=a.tables, r=a.bits)

    single = layers.empty_like().to(dev)
    single.add(x[:1000])  # warm-up
    res["single_add_s"], _ = best_of(lambda: single.reset() or single.add(x), a.repeats, cuda)
    single.score(q[:1000])
    res["single_score_s"], s_single = best_of(lambda: single.score(q), a.repeats, cuda)

    def build():
        sh = ShardedIndex(layers, devices=devices, n_shards=per * len(devices))
        return sh.add(x)

    build().score(q[:1000], query_batch=chunk)  # warm-up: hashers, threads, allocator
    res["sharded_add_s"], sh = best_of(build, a.repeats, cuda)
    res["sharded_score_s"], s_sh = best_of(lambda: sh.score(q, query_batch=chunk), a.repeats, cuda)
    ref = s_single.cpu().numpy() if cuda else s_single
    res["max_abs_diff"] = float(np.abs(s_sh - ref).max())
    res["agree_1e-6"] = bool(np.allclose(s_sh, ref, rtol=1e-6, atol=1e-6))
    res["score_ratio"] = res["sharded_score_s"] / res["single_score_s"]
    res["add_ratio"] = res["sharded_add_s"] / res["single_add_s"]
    sh.close()
    out = a.out or (os.path.join(os.environ["OUT"], "sharded_results.json") if os.environ.get("OUT") else None)
    if out:
        with open(out, "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res))
    print(f"sharded: {res['shards']} shards on {devices}: add {res['sharded_add_s']:.3f} s "
          f"(single {res['single_add_s']:.3f} s), score {res['sharded_score_s']:.3f} s "
          f"(single {res['single_score_s']:.3f} s), max |diff| {res['max_abs_diff']:.2e}")
    return 0 if res["agree_1e-6"] else 1


if __name__ == "__main__":
    sys.exit(main())
