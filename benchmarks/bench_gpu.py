"""GPU benchmark of the CUDA engine on ShanghaiTech-shaped synthetic features.

N = 792,855 train and M = 112,422 test features of d = 9216, b = 8 tables of r = 32 bits, all
generated on the device (smooth clustered "videos").  Measured with CUDA events, after warm-up,
median of --repeats runs:

  build       LayerNorm + projection GEMM (torch) + binarize (fused sigmoid) + build_tables
  score       end-to-end anomaly score of all M queries: LayerNorm + GEMM + binarize + lookup
              (mode 'mean') + min over tables
  lookup      the lookup kernel alone; its effective bandwidth = bytes it must touch (query codes +
              query keys + the stored codes of every bucket visited, once per visit + outputs) /
              time, against a device-to-device copy (read + write bytes / time) on the same card
  knn         exact kNN baseline of the paper (k = 1024, cosine: top-k inner products of
              L2-normalised features, faiss IndexFlatIP's computation) on a query subset against
              all N, scaled linearly to M.  With faiss-gpu when importable; otherwise the same
              computation in torch on the GPU (chunked float32 matmul + topk), labelled as such.
              Timed in IEEE float32 (TF32 off: exact) and, for reference, with TF32.

Writes JSON to --out (default $OUT/gpu_results.json when $OUT is set) and prints a table last.
`--device cpu --quick` runs the same flow with the CPU engine at toy sizes (a smoke test).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from llsh_index.cli import positive_int  # noqa: E402  (argparse type; numpy-only import)


# ----------------------------------------------------------------------------------- engines
class Engine:
    """The three engine calls on one device (CUDA engine on a GPU, CPU engine for the smoke test)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            from llsh_index import _cuda_engine as ce

            self.ce = ce
        else:
            from llsh_index import _C

            self.C = _C

    def binarize_logits(self, logits):  # [..., r] logits (a temporary) -> codes (over it), keys
        if self.cuda:
            return self.ce.binarize(logits, from_logits=True, inplace=True)
        codes = torch.sigmoid(logits).contiguous()
        return codes, torch.from_numpy(self.C.binarize_cpu(codes.numpy()))

    def build(self, keys, codes, ids):
        if self.cuda:
            return self.ce.build_tables(keys, codes, ids)
        t = self.C.build_tables_cpu(keys.numpy(), codes.numpy(), ids.numpy())
        return {k: (torch.from_numpy(v) if v is not None else None) for k, v in t.items()}

    def lookup(self, tables, n, q_codes, q_keys, mode, miss, return_min=False, return_visited=False):
        if self.cuda:
            return self.ce.lookup(tables, n, q_codes, q_keys, mode, miss, return_min=return_min,
                                  return_visited=return_visited)
        t = {k: (v.numpy() if v is not None else None) for k, v in tables.items()}
        out, visited = self.C.lookup_cpu(t["keys"], t["table_start"], t["offsets"], t["codes"], t["bucket_sum"],
                                         t["bucket_sqnorm"], n, q_codes.numpy(), q_keys.numpy(), mode, miss)
        out = torch.from_numpy(out)
        res = [out]
        if return_min:
            res.append(out.min(1).values)
        if return_visited:
            res.append(torch.full(out.shape, visited // max(out.numel(), 1), dtype=torch.int64))
        return tuple(res) if len(res) > 1 else out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int = 1):
    """Median milliseconds of fn() (CUDA events on a GPU), after warm-up; also every run."""
    for _ in range(warmup):
        fn()
    sync(device)
    runs = []
    for _ in range(repeats):
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            runs.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            fn()
            runs.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(runs), runs


# -------------------------------------------------------------------------------------- data
def smooth(x: torch.Tensor, width: int) -> torch.Tensor:
    """Moving average along the last dimension, re-standardised per row."""
    y = F.avg_pool1d(x[:, None, :], width, stride=1, padding=width // 2, count_include_pad=False)[:, 0, :x.shape[1]]
    return (y - y.mean(1, keepdim=True)) / y.std(1, keepdim=True)


class Generator:
    """Videos of `frames` frames; a video sits near one of `clusters` smooth centres and drifts along
    a smooth low-dimensional trajectory; test videos are partly anomalous (shifted centres)."""

    def __init__(self, d, clusters, device, seed, drift, noise, dtype):
        g = torch.Generator(device=device).manual_seed(seed)
        self.g, self.d, self.device, self.dtype = g, d, device, dtype
        self.centers = smooth(torch.randn((clusters, d), device=device, generator=g), 33)
        self.basis = smooth(torch.randn((16, d), device=device, generator=g), 65) / 4.0
        self.clusters, self.drift, self.noise = clusters, drift, noise

    def make(self, n, frames=400, anomalous=0.0, chunk=65536):
        dev, g = self.device, self.g
        v = (n + frames - 1) // frames
        cl = torch.randint(0, self.clusters, (v,), device=dev, generator=g)
        freq = torch.rand((v, 16), device=dev, generator=g) * 0.05
        phase = torch.rand((v, 16), device=dev, generator=g) * 2 * math.pi
        shift = torch.zeros((v, self.d), device=dev)
        n_anom = int(round(anomalous * v))
        if n_anom:
            shift[:n_anom] = smooth(torch.randn((n_anom, self.d), device=dev, generator=g), 33) * 0.6
        x = torch.empty((n, self.d), device=dev, dtype=self.dtype)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            rows = torch.arange(s, e, device=dev)
            vid, t = rows // frames, (rows % frames).float()
            z = torch.sin(freq[vid] * t[:, None] + phase[vid])
            blk = self.centers[cl[vid]] + self.drift * (z @ self.basis) + shift[vid]
            blk += self.noise * torch.randn((e - s, self.d), device=dev, generator=g)
            x[s:e] = blk.to(self.dtype)
        labels = torch.zeros(n, dtype=torch.bool, device=dev)
        labels[: min(n, n_anom * frames)] = True
        return x, labels


# --------------------------------------------------------------------------------- benchmark
class Stopped(Exception):
    """SIGTERM (the stage timeout of benchmarks/gpu_check.sh): stop, but still print what was measured."""


def _stop(signum, frame):
    raise Stopped(f"stopped by signal {signum} (time limit)")


def run(args, res: dict) -> dict:
    """Fills res in place, so that a failure or a timeout midway keeps every number measured before it."""
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
        p = torch.cuda.get_device_properties(dev)
        res["device"] = {"name": p.name, "memory_gib": round(p.total_memory / 2 ** 30, 1), "sms": p.multi_processor_count,
                         "torch": torch.__version__, "torch_cuda": torch.version.cuda}
        from llsh_index import _C

        res["device"]["llsh_cuda_status"] = list(_C.cuda_status())
    eng = Engine(dev)
    N, M, d, b, r = args.n_train, args.n_test, args.dim, args.tables, args.bits
    feat_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32

    t0 = time.perf_counter()
    gen = Generator(d, args.clusters, dev, args.seed, args.drift, args.noise, feat_dtype)
    X, _ = gen.make(N)
    Q, q_anom = gen.make(M, anomalous=args.anomalous)
    wg = torch.Generator(device=dev).manual_seed(args.seed + 1)
    W = (torch.randn((d, b * r), device=dev, generator=wg) / math.sqrt(d)).to(feat_dtype)
    sync(dev)
    res["data_seconds"] = round(time.perf_counter() - t0, 2)

    def hash_logits(feats):  # LayerNorm + projection -> [n, b*r] float32 logits
        h = F.layer_norm(feats, (d,))
        return (h @ W).float()

    state = {}

    def build():
        logits = hash_logits(X).view(N, b, r).transpose(0, 1).contiguous()  # [b, N, r]
        codes, keys = eng.binarize_logits(logits)
        ids = torch.arange(N, device=dev).expand(b, N).contiguous()
        state["tables"] = eng.build(keys, codes, ids)

    def build_tables_only():
        eng.build(state["keys"], state["codes"], state["ids"])

    res["build_ms"], res["build_runs_ms"] = timed(build, dev, args.repeats)
    logits = hash_logits(X).view(N, b, r).transpose(0, 1).contiguous()
    state["codes"], state["keys"] = eng.binarize_logits(logits)
    state["ids"] = torch.arange(N, device=dev).expand(b, N).contiguous()
    del logits
    res["build_tables_ms"], _ = timed(build_tables_only, dev, args.repeats)
    tables = state["tables"]
    del state["codes"], state["keys"], state["ids"]
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # bucket statistics
    ts = tables["table_start"].cpu().numpy()
    sizes = np.diff(tables["offsets"].cpu().numpy())
    res["buckets"] = {"U": int(len(sizes)), "per_table_mean": float(len(sizes) / b), "max": int(sizes.max()),
                      "mean": float(sizes.mean()), "items_in_buckets_over_2048": float(sizes[sizes > 2048].sum() / (b * N))}
    del ts

    miss = float("inf")
    q_codes, q_keys = eng.binarize_logits(hash_logits(Q).view(M, b, r))

    def score():
        c, k = eng.binarize_logits(hash_logits(Q).view(M, b, r))
        _, s = eng.lookup(tables, N, c, k, 0, miss, return_min=True)
        state["score"] = s

    res["score_ms"], res["score_runs_ms"] = timed(score, dev, args.repeats)
    for mode, name in ((0, "mean"), (1, "light"), (2, "squared")):
        res[f"lookup_{name}_ms"], _ = timed(lambda: eng.lookup(tables, N, q_codes, q_keys, mode, miss), dev,
                                            args.repeats)

    # bytes the mean lookup must touch
    _, visited = eng.lookup(tables, N, q_codes, q_keys, 0, miss, return_visited=True)
    visited_rows = int(visited.sum())
    code_bytes = tables["codes"].element_size()
    touched = M * b * r * 4 + M * b * 8 + visited_rows * r * code_bytes + M * b * 4
    res["lookup_visited_rows"] = visited_rows
    res["lookup_hit_rate"] = float((visited > 0).float().mean())
    res["lookup_mean_rows_per_hit"] = float(visited_rows / max(1, int((visited > 0).sum())))
    res["lookup_bytes"] = touched
    res["lookup_gbps"] = touched / (res["lookup_mean_ms"] * 1e-3) / 1e9
    nbytes = args.copy_mib * 2 ** 20
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    copy_ms, _ = timed(lambda: dst.copy_(src), dev, max(args.repeats, 5))
    res["copy_gbps"] = 2 * nbytes / (copy_ms * 1e-3) / 1e9
    res["lookup_vs_copy"] = res["lookup_gbps"] / res["copy_gbps"]
    del src, dst
    # scores: sanity (anomalous videos should score higher on average)
    s = state["score"]
    fin = torch.isfinite(s)
    res["score_finite_frac"] = float(fin.float().mean())
    if bool(q_anom.any()) and bool((~q_anom).any()):
        big = float(s[fin].max()) + 1.0 if bool(fin.any()) else 1.0
        s2 = torch.where(fin, s, torch.full_like(s, big)).double()
        res["score_mean_anomalous_vs_normal"] = [float(s2[q_anom].mean()), float(s2[~q_anom].mean())]

    del q_codes, q_keys, visited, tables, state["tables"]
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    res["knn"] = {}  # filled in place, so a stage that fails or times out keeps what it measured
    knn_baseline(args, Q, X, dev, N, M, res, res["knn"])
    return res


def _normalise_rows(x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """float32 copy of x with unit L2 rows (the vectors an IndexFlatIP holds), chunked to bound memory."""
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for s in range(0, x.shape[0], chunk):
        out[s:s + chunk] = F.normalize(x[s:s + chunk].float(), dim=1)
    return out


def knn_baseline(args, Q, X, dev, N, M, res, out) -> None:
    """Exact kNN (k = args.faiss_k, cosine) of args.faiss_queries queries against all N train features.

    Score = mean over the k nearest of (1 - cosine similarity), as llsh_index.baselines.KNNScorer
    (faiss IndexFlatIP on L2-normalised features).  Normalising the database is index building,
    outside the timing; the timed search is similarities + top-k + the mean, as faiss's search.
    """
    k = min(args.faiss_k, N)
    nq = min(args.faiss_queries, M)
    out.update({"k": k, "queries": nq, "status": "not run"})
    backend = "torch"
    try:
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401

        if dev.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            backend = "faiss-gpu"
        else:
            out["faiss"] = "faiss importable but without GPU support: torch fallback"
    except Exception as e:
        out["faiss"] = f"faiss not importable ({type(e).__name__}: {e}): torch fallback"
    out["backend"] = backend
    out["label"] = ("faiss-gpu knn_gpu, inner product on L2-normalised features" if backend == "faiss-gpu" else
                    f"torch on {dev.type} (no faiss-gpu here): float32 matmul on L2-normalised features + "
                    "topk, faiss IndexFlatIP's computation")
    tf32_was = torch.backends.cuda.matmul.allow_tf32
    try:
        xb = _normalise_rows(X)
        xq = _normalise_rows(Q[:nq])
        if backend == "faiss-gpu":
            gres = faiss.StandardGpuResources()

            def knn():
                sims, _ = faiss.knn_gpu(gres, xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
                return 1.0 - sims.double().mean(1)
        else:
            batch = max(1, min(nq, args.knn_batch))

            def knn():
                scores = torch.empty(nq, dtype=torch.float64, device=xq.device)
                for s in range(0, nq, batch):
                    sims = xq[s:s + batch] @ xb.T  # [batch, N] float32, like faiss's GEMM tiles
                    top = torch.topk(sims, k, dim=1, largest=True, sorted=False).values
                    scores[s:s + batch] = 1.0 - top.double().mean(1)
                return scores

        # fp32 = IEEE float32 GEMM (exact kNN); tf32 = the same with TF32 tensor cores, for reference.
        # faiss-gpu keeps its own cuBLAS settings: one run, filed as fp32.
        variants = [("fp32", False)] + ([("tf32", True)] if dev.type == "cuda" and backend == "torch" else [])
        for name, tf32 in variants:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            ms, _ = timed(knn, dev, max(1, min(args.repeats, 3)), warmup=1)
            scaled = ms * M / nq
            out[name] = {"subset_ms": ms, "scaled_to_M_ms": scaled,
                         "ratio_vs_llsh_score": scaled / res["score_ms"] if res.get("score_ms") else None}
            out["status"] = "ok"
        if backend == "torch":
            # sanity: 4 queries against float64 similarities (chunked: no float64 copy of the database)
            torch.backends.cuda.matmul.allow_tf32 = False
            sims = torch.cat([xq[:4].double() @ xb[s:s + 65536].double().T for s in range(0, N, 65536)], dim=1)
            ref = 1.0 - torch.topk(sims, k, dim=1).values.mean(1)
            out["check_max_abs_err_vs_float64"] = float((knn()[:4] - ref).abs().max())
        out["note"] = f"measured on {nq} queries x {N} items, scaled linearly to {M} queries"
    except Exception as e:
        traceback.print_exc()
        out["status"] = f"error: {type(e).__name__}: {e}"
        res["errors"]["knn"] = out["status"]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_was


def table(res) -> str:
    def f(key, fmt="{:.1f}", unit=""):
        v = res.get(key)
        return "n/a" if v is None else fmt.format(v) + unit

    kn = res.get("knn", {})
    knn_rows = []
    for name, what in (("fp32", "exact fp32"), ("tf32", "TF32 GEMM")):
        v = kn.get(name)
        if not v:
            continue
        ratio = v.get("ratio_vs_llsh_score")
        knn_rows.append((f"kNN k={kn.get('k')} {what}, all M ({kn.get('queries')} q scaled)",
                         f"{v['scaled_to_M_ms']:.0f} ms = LLSH score x{ratio:.0f}" if ratio else
                         f"{v['scaled_to_M_ms']:.0f} ms", ">= x1000" if name == "fp32" else "",
                         _ok(ratio, 1000, le=False) if name == "fp32" else ""))
    if not knn_rows:
        knn_rows.append(("exact kNN baseline", str(kn.get("status", "n/a"))[:60], "", ""))
    rows = [
        ("build: LN+GEMM+binarize+build_tables", f("build_ms", unit=" ms"), "<= 300 ms",
         _ok(res.get("build_ms"), 300, le=True)),
        ("  of which build_tables", f("build_tables_ms", unit=" ms"), "", ""),
        ("score all M queries (end to end)", f("score_ms", unit=" ms"), "<= 30 ms", _ok(res.get("score_ms"), 30, le=True)),
        ("lookup kernel, mean / light / squared",
         f"{res.get('lookup_mean_ms', float('nan')):.2f} / {res.get('lookup_light_ms', float('nan')):.2f} / "
         f"{res.get('lookup_squared_ms', float('nan')):.2f} ms", "", ""),
        ("lookup effective bandwidth", f("lookup_gbps", unit=" GB/s"), "", ""),
        ("device-to-device copy bandwidth", f("copy_gbps", unit=" GB/s"), "", ""),
        ("lookup / copy bandwidth", f("lookup_vs_copy", "{:.0%}"), ">= 50%", _ok(res.get("lookup_vs_copy"), 0.5, le=False)),
    ] + knn_rows
    bk = res.get("buckets", {})
    lines = [f"N={res['config']['n_train']} M={res['config']['n_test']} d={res['config']['dim']} "
             f"b={res['config']['tables']} r={res['config']['bits']} precision={res['config']['precision']}; "
             f"buckets/table={bk.get('per_table_mean', 0):.0f}, max bucket={bk.get('max', 0)}, "
             f"hit rate={res.get('lookup_hit_rate', 0):.2f}, rows/hit={res.get('lookup_mean_rows_per_hit', 0):.0f}"]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    hdr = ("metric", "value", "target", "ok")
    w = [max(w[i], len(hdr[i])) for i in range(4)]
    lines.append("  ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
    lines.append("  ".join("-" * w[i] for i in range(4)))
    lines += ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    if kn.get("backend"):
        lines.append(f"kNN baseline: {kn['label']}")
    if res.get("errors"):
        lines.append("errors: " + "; ".join(f"{k}: {v}" for k, v in res["errors"].items()))
    return "\n".join(lines)


def _ok(v, target, le):
    if v is None:
        return ""
    return "yes" if (v <= target if le else v >= target) else "NO"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n-train", type=positive_int, default=792855)
    ap.add_argument("--n-test", type=positive_int, default=112422)
    ap.add_argument("--dim", type=positive_int, default=9216)
    ap.add_argument("--tables", type=positive_int, default=8)
    ap.add_argument("--bits", type=positive_int, default=32)
    ap.add_argument("--clusters", type=positive_int, default=512)
    ap.add_argument("--drift", type=float, default=0.25, help="amplitude of the smooth within-video drift")
    ap.add_argument("--noise", type=float, default=0.1, help="iid noise per frame")
    ap.add_argument("--anomalous", type=float, default=0.1, help="fraction of anomalous test videos")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="tf32",
                    help="features/GEMM: fp32, fp32 with TF32 tensor cores, or bf16 features")
    ap.add_argument("--repeats", type=positive_int, default=5)
    ap.add_argument("--copy-mib", type=positive_int, default=2048)
    ap.add_argument("--faiss-queries", type=positive_int, default=2048, help="queries timed by the exact kNN baseline")
    ap.add_argument("--faiss-k", type=positive_int, default=1024, help="k of the exact kNN baseline")
    ap.add_argument("--knn-batch", type=positive_int, default=1024, help="queries per similarity block (torch kNN)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="toy sizes (smoke test)")
    ap.add_argument("--out", default=None, help="JSON output (default $OUT/gpu_results.json if $OUT is set)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train, args.n_test, args.dim, args.clusters = 20000, 3000, 256, 16
        args.copy_mib, args.faiss_queries, args.repeats = 64, 256, 2
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_results.json") if os.environ.get("OUT") else None)
    t0 = time.perf_counter()
    signal.signal(signal.SIGTERM, _stop)
    res = {"config": vars(args).copy(), "errors": {}}
    try:
        run(args, res)
    except (Exception, Stopped) as e:
        traceback.print_exc()
        res["errors"]["run"] = f"{type(e).__name__}: {e}"
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as fh:
            json.dump(res, fh, indent=2, default=float)
    print(json.dumps({k: v for k, v in res.items() if k not in ("config",)}, indent=1, default=float))
    print()
    print(table(res))
    return 0 if not res.get("errors") else 1


if __name__ == "__main__":
    sys.exit(main())
