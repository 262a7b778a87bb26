"""Table 2 of the LLSH paper (Lu, Cao, Zhang): accuracy against cost of KNN, K-means, LSH, LLSH,
light-LLSH (and our exact squared-L2 mode), all measured in one run on the same features.

    python benchmarks/table2.py --quick                          # synthetic, tiny scale, < 2 min on CPU
    python benchmarks/table2.py --synthetic --scale 0.2          # the full CPU run (3-13 min on 2 cores, with the load)
    python benchmarks/table2.py --features DIR [--labels L.npz] [--snippet-frames K]  # your own features (layout below)
    python benchmarks/table2.py --ped2-features [PATH]           # Ped2 demo features (llsh_index/data/ped2_demo.npz)

Outputs (in --out, default benchmarks/out/table2[_ped2|_features][_quick]): table2.md (also printed), table2.json,
table2.png (macro-AUC against multiplications per query and against disk, log x), the saved
models (models/), the per-snippet scores (scores/) and each worker's job/result (jobs/).

Rows (b = 8 tables, r = 32 bits; MoCo as the paper's ShanghaiTech setting: batch 256, queue 8192,
60 iterations per video, 1 epoch; Ped2 uses the paper's Avenue batch 32 / queue 2048)
  KNN (k=1024)        faiss exact search, distance 1 - cos, score = mean of the k smallest
                      (the authors' 2-KNN); training features streamed into faiss in chunks
  K-means (K=32)      the K named by the paper's text (authors' 3-KMeans/train.sh: --K 32)
  K-means (K=256)     our second K: K = b*r, which gives K-means the same per-query
                      multiplication budget as LLSH's hashing step (K*d = d*b*r)
  LSH                 the untrained hash layers (Xavier init, same seed as LLSH's start), mode mean
  LLSH                trained (MoCo, fit with one video id per training video), mode mean
  light-LLSH          same trained layers, mode light, statistics-only index (store_codes=False):
                      the file holds the hash layers and per-bucket sums only
  LLSH squared (ours) same trained layers, mode squared (exact mean squared L2), statistics-only
  with --project-pcs K  LLSH, light-LLSH and squared train with project_pcs=K, project_mean (ours:
                      the layers lose the data's top-K principal directions; names say so)
  with --centre-layers  ... and with centre_layers (ours: the mean direction leaves the layers too)
  with --n-bits R     r = R bits per table for every LSH-family row (default 32, the paper's)
  with --code-dtype float16  the LSH-family rows store float16 codes (half the file; names say so)
  with --probes P     LSH and LLSH again, scored with P probes per table (llsh_index.probing, ours);
                      their n counts the codes of every probed bucket
  with --miss-probes P / --reduce mean   LLSH again, scored with P probes for the queries that miss
                      every table and / or the mean over the tables that hit (both ours)

Multiplications per query
  paper formulas (as stated in our issue; the paper's text itself was not available to check):
    KNN N*d;  K-means K*d;  LSH / LLSH d*b*r + n*r;  light-LLSH d*b*r + b*r
    ours, squared: d*b*r + 2*b*r (q.sum and q.q per table)
    n = stored codes compared per query, measured: index.last_n_compared / M.
  counted (what the implementation does on this run, divisions counted as multiplications):
    KNN       KNNScorer.count_multiplications: N*d + 2d (query normalisation)
    K-means   KMeansScorer.count_multiplications: K*d + d (exact distance recomputation)
    LSH family  hashing d*b*r + 2d (LayerNorm: variance and scaling) + per bucket visited:
              mean r per stored code (n_compared codes); light 2r per hit bucket (sum/count and
              the square); squared 2r + 3 per hit bucket.  Sigmoids, square roots, BLAS
              internals and faiss's top-k heap are not counted.

Timing: wall clock (time.perf_counter) of build (KNN: normalise + faiss add; K-means: faiss
training + assignment counts; LSH family: hashing + sorted tables; LLSH training is reported
separately, once, and shared by the three trained rows) and of scoring all M test snippets.

Peak memory: every method runs in its own subprocess (default; --no-isolate, the default with
--quick, runs them in this process: faster, but freed memory the allocator keeps hides later peaks).  Per phase (build, score), the kernel's peak RSS (VmHWM, reset through
/proc/self/clear_refs) minus the RSS of the worker after its imports: this includes native
allocations (faiss, torch, the C++ engine) and the pages of the feature memmaps the phase read
(file-backed, reclaimable).  peak_anon_mb is RssAnon sampled every 5 ms (same baseline): the
method's own heap without the memmapped features; it can miss spikes shorter than 5 ms.  The
score phase still holds the built model, so its peak includes the model.

AUC: llsh_index.metrics.evaluate, sigma 12.  Snippet scores meet the frames one of two ways:
  --snippet-frames K (with --features): snippet i covers frames [K i, K i + K) and is aligned to its
      middle frame K i + K // 2 (llsh_index.feature_arrays.snippet_frame_index); each frame takes the
      linear interpolation of its two nearest snippets' scores (llsh_index.cli.frame_scores), the
      per-frame scores `llsh-index import --snippet-frames K` + `score` give; sigma is then in frames.
  otherwise: the reference's centred placement (align="centre", padding 0) when a video has fewer
      snippets than frames, for one snippet per start position (sigma in snippets).  Features of one
      snippet per K frames without --snippet-frames are refused before any method runs (most frames
      would be padding: metrics.check_centre_alignment).
Single-class videos: macro-AUC skips them (single_class="skip", the count is reported;
ShanghaiTech has one, 04_0011, all normal); micro-AUC pools every frame of every video.

--features DIR layout (either):
  (a) per video:  DIR/train/*.npy  one (n_i, d) array per training video (time order; video = file),
                  DIR/test/*.npy   one (m_j, d) array per test video, file stem = video name,
                  DIR/labels.npz   frame labels, video name -> 0/1 per frame (or --labels PATH);
                  m_j may be smaller than the video's frame count: one snippet per start position
                  (centred placement), or one per K frames with --snippet-frames K (I3D: 16).
                  Converted once, streaming, into a feature bundle under --out.
  (b) a feature bundle as written by llsh_index.synthetic (manifest.json, train_features.npy, ...).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The checkout's llsh_index only when none is installed (a checkout built in place): an installed one
# (editable, or a wheel next to an unpacked sdist whose llsh_index/ has no built _C) comes first, in the
# --worker subprocesses too.
if importlib.util.find_spec("llsh_index") is None and ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from llsh_index import synthetic  # noqa: E402  (numpy-only import; torch/faiss load in the workers)
from llsh_index.cli import (_fmt_auc, int_list, nonnegative_int, output_folder, positive_float,  # noqa: E402
                            positive_int)

DEFAULT_PED2 = os.path.join(ROOT, "llsh_index", "data", "ped2_demo.npz")
PAPER = {"llsh_mult_ratio": 0.0026, "llsh_disk": "316 MB", "knn_disk": "28 GB", "disk_ratio": 316e6 / 28e9}
_CHUNK_ROWS = 32768


# --------------------------------------------------------------------------- settings and rows


@dataclass
class Settings:
    knn_k: int = 1024
    knn_batch: int = 1024
    kmeans_ks: Sequence[int] = (32, 256)
    kmeans_iter: int = 25
    n_tables: int = 8
    n_bits: int = 32
    iterations: int = 60
    epochs: int = 1
    batch_size: int = 256
    queue_size: int = 8192
    max_offset: int = 150
    seed: int = 0
    sigma: float = 12.0
    single_class: str = "skip"
    isolate: bool = True
    methods: Optional[Sequence[str]] = None  # keys of method_specs(); None = all
    probes: int = 0  # > 1: also LSH and LLSH rows scored with this many probes per table (ours)
    miss_probes: int = 0  # > 1: an LLSH row with probing on a miss (ours)
    reduce: str = "min"   # "mean": that LLSH row takes the mean over the tables that hit (ours)
    project_pcs: int = 0  # > 0: LLSH training removes the data's top principal directions (ours; 0 = paper)
    centre_layers: bool = False  # LLSH training also removes the data's mean direction (ours)
    code_dtype: str = "float32"  # the stored codes of the LSH-family rows ("float16": half the file and memory)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["kmeans_ks"] = list(self.kmeans_ks)
        d["methods"] = None if self.methods is None else list(self.methods)
        return d


def method_specs(s: Settings) -> List[dict]:
    rows = [{"key": "knn", "name": f"KNN (k={s.knn_k}, cosine)", "kind": "knn"}]
    for k in s.kmeans_ks:
        rows.append({"key": f"kmeans{k}", "name": f"K-means (K={k})", "kind": "kmeans", "K": int(k)})
    rows += [
        {"key": "lsh", "name": "LSH (untrained)", "kind": "lsh", "trained": False, "mode": "mean",
         "store_codes": True},
        {"key": "llsh", "name": "LLSH", "kind": "lsh", "trained": True, "mode": "mean", "store_codes": True},
        {"key": "light", "name": "light-LLSH", "kind": "lsh", "trained": True, "mode": "light",
         "store_codes": False},
        {"key": "squared", "name": "LLSH squared (ours, exact)", "kind": "lsh", "trained": True,
         "mode": "squared", "store_codes": False},
    ]
    if s.project_pcs > 0 or s.centre_layers:  # the trained rows are ours then, and say so
        tag = ", ".join(([f"{s.project_pcs} PCs projected"] if s.project_pcs > 0 else [])
                        + (["centred"] if s.centre_layers else []))
        for row in rows:
            if row.get("trained"):
                row["name"] += f" [{tag}]"
    if s.code_dtype != "float32":
        for row in rows:
            if row.get("store_codes"):
                row["name"] += f" ({s.code_dtype} codes)"
    if s.probes > 1:  # multi-probe (llsh_index.probing): the same indexes, more buckets per table
        rows += [{"key": "lsh_probes", "name": f"LSH, {s.probes} probes (ours)", "kind": "lsh", "trained": False,
                  "mode": "mean", "store_codes": True, "n_probes": s.probes},
                 {"key": "llsh_probes", "name": f"LLSH, {s.probes} probes (ours)", "kind": "lsh", "trained": True,
                  "mode": "mean", "store_codes": True, "n_probes": s.probes}]
    if s.miss_probes > 1 or s.reduce != "min":  # the same LLSH index, scored with the lookup extensions
        what = ([f"{s.miss_probes} probes on a miss"] if s.miss_probes > 1 else []) + (
            [f"{s.reduce} over tables"] if s.reduce != "min" else [])
        rows.append({"key": "llsh_ours", "name": f"LLSH, {', '.join(what)} (ours)", "kind": "lsh", "trained": True,
                     "mode": "mean", "store_codes": True, "miss_probes": s.miss_probes if s.miss_probes > 1 else 0,
                     "reduce": s.reduce})
    if s.methods is not None:
        unknown = sorted(set(s.methods) - {r["key"] for r in rows})
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; expected some of {[r['key'] for r in rows]}")
        rows = [r for r in rows if r["key"] in s.methods]
    return rows


# --------------------------------------------------------------------------- memory


def _proc_status() -> Dict[str, int]:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmHWM", "VmRSS", "RssAnon", "RssFile")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


class PeakMemory:
    """Per-phase peak memory of this process (see the module docstring for what it means)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        st = _proc_status()
        self.can_reset = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.can_reset = "VmHWM" in st
        except OSError:
            pass
        self.base_rss = st.get("VmRSS", 0)
        self.base_anon = st.get("RssAnon", 0)
        self._stop = None
        self._thread = None
        self._peak_anon = 0

    def rebase(self) -> None:
        st = _proc_status()
        self.base_rss, self.base_anon = st.get("VmRSS", 0), st.get("RssAnon", 0)

    def _sample(self):
        while not self._stop.is_set():
            a = _proc_status().get("RssAnon", 0)
            if a > self._peak_anon:
                self._peak_anon = a
            self._stop.wait(self.interval)

    def start(self) -> None:
        if self.can_reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        import resource

        self._ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self._peak_anon = _proc_status().get("RssAnon", 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        st = _proc_status()
        self._peak_anon = max(self._peak_anon, st.get("RssAnon", 0))
        mb = 1 / (1 << 20)
        if self.can_reset:
            peak = st["VmHWM"]
            how = "VmHWM (reset per phase) - worker RSS after imports"
        else:  # ru_maxrss is monotonic: only a rise above the previous peak shows
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            how = "ru_maxrss - worker RSS after imports (monotonic: an underestimate after earlier peaks)"
        return {"peak_rss_mb": round((peak - self.base_rss) * mb, 1),
                "peak_anon_mb": round((self._peak_anon - self.base_anon) * mb, 1), "how": how}


# --------------------------------------------------------------------------- worker side


def _quiet_warnings():
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def _job_train(job: dict) -> dict:
    from llsh_index import LearnableLSHIndex

    s = Settings(**job["settings"])
    b = synthetic.open_bundle(job["bundle"])
    mem = PeakMemory()
    mem.rebase()
    idx = LearnableLSHIndex(b.dim, s.n_tables, s.n_bits, mode="mean", seed=s.seed)
    mem.start()
    t0 = time.perf_counter()
    idx.fit(b.train, video_ids=b.train_video_ids, iterations=s.iterations, epochs=s.epochs,
            batch_size=s.batch_size, queue_size=s.queue_size, max_offset=s.max_offset,
            project_pcs=s.project_pcs, project_mean=s.project_pcs > 0, centre_layers=s.centre_layers,
            progress=job.get("progress", False))
    train_s = time.perf_counter() - t0
    m = mem.stop()
    idx.save(job["layers"])  # hash layers only (no tables yet)
    losses = idx.training_log_.losses
    head = float(np.mean(losses[:10])) if losses else float("nan")
    tail = float(np.mean(losses[-10:])) if losses else float("nan")
    return {"train_s": train_s, "steps": idx.training_log_.steps, "loss_first10": head, "loss_last10": tail,
            "train_mem": m}


def _job_method(job: dict) -> dict:
    spec, s = job["spec"], Settings(**job["settings"])
    b = synthetic.open_bundle(job["bundle"])
    models = os.path.join(job["out_dir"], "models")
    os.makedirs(models, exist_ok=True)
    kind = spec["kind"]
    if kind in ("knn", "kmeans"):
        from llsh_index.baselines import KMeansScorer, KNNScorer
    else:
        from llsh_index import LearnableLSHIndex
        trained = LearnableLSHIndex.load(job["layers"]) if spec["trained"] else None
    mem = PeakMemory()
    mem.rebase()
    n, d = b.n_train, b.dim

    # ---- build
    mem.start()
    t0 = time.perf_counter()
    if kind == "knn":
        if n < s.knn_k:
            raise SystemExit(f"KNN: k={s.knn_k} needs at least {s.knn_k} training rows, got {n}")
        scorer = KNNScorer(k=s.knn_k, metric="cosine", batch_size=s.knn_batch, use_gpu=False)
        step = max(s.knn_k, _CHUNK_ROWS)
        scorer.fit(b.train[:step])
        for i in range(step, n, step):  # streamed: faiss holds the (normalised) features, we hold a chunk
            scorer.add(b.train[i:i + step])
        path = os.path.join(models, f"{spec['key']}.npz")
    elif kind == "kmeans":
        scorer = KMeansScorer(n_clusters=spec["K"], n_iter=s.kmeans_iter, seed=s.seed, use_gpu=False)
        scorer.fit(b.train)  # faiss.Kmeans needs every training point: it reads the memmap
        path = os.path.join(models, f"{spec['key']}.npz")
    else:
        if spec["trained"]:
            # the trained layers in a new index (other mode / statistics-only)
            scorer = trained.empty_like(mode=spec["mode"], store_codes=spec["store_codes"],
                                        code_dtype=s.code_dtype)
        else:
            scorer = LearnableLSHIndex(d, s.n_tables, s.n_bits, mode=spec["mode"],
                                       store_codes=spec["store_codes"], seed=s.seed, code_dtype=s.code_dtype)
        scorer.add(b.train)
        path = os.path.join(models, f"{spec['key']}.llsh")
    build_s = time.perf_counter() - t0
    build_mem = mem.stop()

    # ---- save (disk = size of the saved model file)
    scorer.save(path)
    disk = os.path.getsize(path)
    resident = {"knn": n * d * 4, "kmeans": spec.get("K", 0) * d * 4}.get(kind)
    if kind == "lsh":
        resident = scorer.memory_bytes() + scorer.encoder.weight.numel() * 4

    # ---- score
    mem.start()
    t0 = time.perf_counter()
    scores = scorer.score(b.test) if kind in ("knn", "kmeans") else scorer.score(
        b.test, n_probes=spec.get("n_probes", 1), miss_probes=spec.get("miss_probes", 0), reduce=spec.get("reduce", "min"))
    score_s = time.perf_counter() - t0
    score_mem = mem.stop()
    scores = np.asarray(scores, dtype=np.float32)
    os.makedirs(os.path.join(job["out_dir"], "scores"), exist_ok=True)
    np.save(os.path.join(job["out_dir"], "scores", f"{spec['key']}.npy"), scores)

    out = {"build_s": build_s, "score_s": score_s, "disk_bytes": disk, "model_path": path,
           "resident_bytes": int(resident), "build_mem": build_mem, "score_mem": score_mem,
           "n_queries": int(b.n_test)}
    if kind in ("knn", "kmeans"):
        out["counted_mults_total"] = int(scorer.count_multiplications(b.n_test))
    else:
        out["n_compared"] = int(scorer.last_n_compared)
        out["stats"] = {k: v for k, v in scorer.stats().items() if k != "mean_bucket_seen_by_item"}
        out["mean_bucket_seen_by_item"] = float(np.mean(scorer.stats()["mean_bucket_seen_by_item"]))
    return out


def _run_job(job: dict) -> dict:
    _quiet_warnings()
    if job["task"] == "train":
        return _job_train(job)
    return _job_method(job)


def _worker_main(job_path: str) -> None:
    with open(job_path) as f:
        job = json.load(f)
    try:
        res = _run_job(job)
    except BaseException:  # the parent reports it: a worker's stderr may be lost in a test's or CI's capture
        with open(job["result"] + ".error", "w") as f:
            f.write(traceback.format_exc())
        raise
    tmp = job["result"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f)
    os.replace(tmp, job["result"])


def _dispatch(job: dict, name: str, out_dir: str, isolate: bool) -> dict:
    jobs = os.path.join(out_dir, "jobs")
    os.makedirs(jobs, exist_ok=True)
    job = dict(job, result=os.path.join(jobs, f"{name}.result.json"))
    if not isolate:
        return _run_job(job)
    path = os.path.join(jobs, f"{name}.json")
    with open(path, "w") as f:
        json.dump(job, f, indent=1)
    error = job["result"] + ".error"
    for stale in (job["result"], error):
        if os.path.exists(stale):
            os.remove(stale)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", path])
    if proc.returncode != 0:
        if os.path.exists(error):
            with open(error) as f:
                why = "its traceback:\n" + f.read()
        else:
            why = "no Python traceback (killed, or died in native code)"
        raise RuntimeError(f"worker {name} failed with exit status {proc.returncode} (job file {path}); {why}")
    with open(job["result"]) as f:
        return json.load(f)


# --------------------------------------------------------------------------- formulas


def formula_mults(spec: dict, n: int, d: int, s: Settings, n_per_query: float) -> float:
    b, r = s.n_tables, s.n_bits
    if spec["kind"] == "knn":
        return float(n * d)
    if spec["kind"] == "kmeans":
        return float(spec["K"] * d)
    if spec["mode"] == "mean":
        return float(d * b * r + n_per_query * r)
    if spec["mode"] == "light":
        return float(d * b * r + b * r)
    return float(d * b * r + 2 * b * r)


def counted_mults_total(spec: dict, res: dict, m: int, d: int, s: Settings) -> int:
    if spec["kind"] in ("knn", "kmeans"):
        return int(res["counted_mults_total"])
    b, r = s.n_tables, s.n_bits
    per_visit = {"mean": r, "light": 2 * r, "squared": 2 * r + 3}[spec["mode"]]
    return int(m * (d * b * r + 2 * d) + res["n_compared"] * per_visit)


# --------------------------------------------------------------------------- core


def _machine() -> dict:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), platform.processor())
    except OSError:
        model = platform.processor()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "loadavg": load, "gpu": "none used (CPU run)"}


def run_table2(bundle_dir: str, out_dir: str, settings: Optional[Settings] = None, *, command: str = "",
               dataset: str = "", progress: bool = True, log=print) -> dict:
    """Runs every row on the bundle, evaluates it and writes table2.{md,json,png} into out_dir."""
    s = settings or Settings()
    os.makedirs(out_dir, exist_ok=True)
    bundle = synthetic.open_bundle(bundle_dir)
    n, m, d = bundle.n_train, bundle.n_test, bundle.dim
    specs = method_specs(s)
    started = datetime.datetime.now().astimezone()
    machine0 = _machine()
    log(f"[table2] {dataset or bundle_dir}: N={n:,} training snippets in {len(bundle.manifest['train_videos'])} videos, "
        f"M={m:,} test snippets in {len(bundle.test_videos)} videos, d={d}")
    base_job = {"bundle": os.path.abspath(bundle_dir), "out_dir": os.path.abspath(out_dir),
                "settings": s.to_json(), "progress": progress,
                "layers": os.path.join(os.path.abspath(out_dir), "models", "llsh_trained_layers.llsh")}
    os.makedirs(os.path.join(out_dir, "models"), exist_ok=True)
    training = None
    if any(sp.get("trained") for sp in specs):
        log(f"[table2] training LLSH hash layers (MoCo, {len(bundle.manifest['train_videos'])} videos x "
            f"{s.iterations} iterations x {s.epochs} epoch(s), batch {s.batch_size})")
        training = _dispatch(dict(base_job, task="train"), "train", out_dir, s.isolate)
        log(f"[table2]   {training['train_s']:.1f} s, {training['steps']} steps, loss "
            f"{training['loss_first10']:.3f} -> {training['loss_last10']:.3f}")

    from llsh_index.metrics import evaluate  # sklearn: imported here, after the workers were defined

    rows = []
    for sp in specs:
        log(f"[table2] {sp['name']} ...")
        res = _dispatch(dict(base_job, task="method", spec=sp), sp["key"], out_dir, s.isolate)
        scores = np.load(os.path.join(out_dir, "scores", f"{sp['key']}.npy"))
        per_video = _frame_scores_of(bundle, scores)
        align = "exact" if all(per_video[v].size == bundle.labels[v].size for v in per_video) else "centre"
        subset = len(bundle.test_videos) < len(bundle.labels)
        ev = evaluate(per_video, bundle.labels, s.sigma, single_class=s.single_class, align=align,
                      allow_subset=subset)
        n_pq = res.get("n_compared", 0) / m
        row = {"key": sp["key"], "name": sp["name"], "spec": sp,
               "macro_auc": ev.macro.auc, "micro_auc": ev.micro.auc,
               "n_single_class": ev.macro.n_single_class, "single_class_videos": list(ev.macro.single_class_videos),
               "n_constant_micro": ev.micro.n_constant,
               "mults_formula_per_query": formula_mults(sp, n, d, s, n_pq),
               "mults_counted_total": counted_mults_total(sp, res, m, d, s),
               "train_s": training["train_s"] if sp.get("trained") else 0.0,
               **{k: v for k, v in res.items() if k not in ("counted_mults_total",)}}
        row["mults_counted_per_query"] = row["mults_counted_total"] / m
        if "n_compared" in res:
            row["compared_per_query"] = n_pq
        rows.append(row)
        log(f"[table2]   macro {_fmt_auc(row['macro_auc'])} micro {_fmt_auc(row['micro_auc'])} | build "
            f"{res['build_s']:.1f} s score {res['score_s']:.2f} s | disk {_fmt_bytes(res['disk_bytes'])}")
    knn = next((r for r in rows if r["key"] == "knn"), None)
    for r in rows:
        r["mults_formula_pct_of_knn"] = None if knn is None else 100 * r["mults_formula_per_query"] / knn["mults_formula_per_query"]
        r["mults_counted_pct_of_knn"] = None if knn is None else 100 * r["mults_counted_per_query"] / knn["mults_counted_per_query"]
        r["disk_pct_of_knn"] = None if knn is None else 100 * r["disk_bytes"] / knn["disk_bytes"]
        r["score_time_pct_of_knn"] = None if knn is None else 100 * r["score_s"] / knn["score_s"]
    finished = datetime.datetime.now().astimezone()
    result = {
        "table": "LLSH paper, Table 2 (reproduction)",
        "command": command, "dataset": dataset, "bundle": os.path.abspath(bundle_dir),
        "data": {"n_train": n, "n_test": m, "dim": d, "n_train_videos": len(bundle.manifest["train_videos"]),
                 "n_test_videos": len(bundle.test_videos), "source": bundle.manifest.get("source"),
                 "config": bundle.manifest.get("config", {}).get("synthetic") if bundle.manifest.get("config") else None},
        "settings": s.to_json(), "training": training, "rows": rows,
        "targets": evaluate_targets(rows),
        "started": started.isoformat(timespec="seconds"), "finished": finished.isoformat(timespec="seconds"),
        "wall_s": (finished - started).total_seconds(),
        "machine": dict(machine0, loadavg_end=_machine()["loadavg"]),
        "auc_protocol": {"sigma": s.sigma, "single_class": s.single_class,
                         "align": (f"per frame: snippets of {_snippet_frames(bundle)} frames, scores interpolated "
                                   "between their middle frames" if _snippet_frames(bundle)
                                   else "centre (when counts differ)"),
                         "pad": "constant 0 (reference)"},
    }
    md = render_markdown(result)
    with open(os.path.join(out_dir, "table2.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out_dir, "table2.json"), "w") as f:
        json.dump(result, f, indent=1, default=_json_default)
    plot(rows, os.path.join(out_dir, "table2.png"), title=dataset)
    result["files"] = {k: os.path.join(out_dir, f"table2.{k}") for k in ("md", "json", "png")}
    log(md)
    return result


def _snippet_frames(bundle) -> Optional[int]:
    """K of a bundle converted with --snippet-frames K (recorded per test video), else None."""
    ks = {v.get("snippet_frames") for v in bundle.test_videos}
    return ks.pop() if len(ks) == 1 else None


def _frame_scores_of(bundle, scores: np.ndarray) -> Dict[str, np.ndarray]:
    """Each test video's scores as evaluate takes them: its snippet scores, or with --snippet-frames K
    per-frame scores made as `llsh-index import --snippet-frames K` + `score` make them."""
    from llsh_index.cli import frame_scores
    from llsh_index.feature_arrays import snippet_frame_index

    per_video = bundle.split_scores(scores)
    for v in bundle.test_videos:
        k = v.get("snippet_frames")
        if k:
            n_frames = int(v["n_frames"])
            per_video[v["name"]] = frame_scores(per_video[v["name"]],
                                                snippet_frame_index(v["count"], int(k), n_frames, v["name"]), n_frames)
    return per_video


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


# --------------------------------------------------------------------------- targets and output


def evaluate_targets(rows: List[dict]) -> List[dict]:
    by = {r["key"]: r for r in rows}
    out = []
    if "knn" in by and "llsh" in by:
        knn, llsh = by["knn"], by["llsh"]
        ratio = llsh["mults_formula_per_query"] / knn["mults_formula_per_query"]
        out.append({"target": "LLSH multiplications <= 0.5% of KNN's (paper: 0.26%)",
                    "value": f"{100 * ratio:.3f}% (formula), {llsh['mults_counted_pct_of_knn']:.3f}% (counted)",
                    "pass": bool(ratio <= 0.005)})
        tr = llsh["score_s"] / knn["score_s"]
        out.append({"target": "LLSH score time <= 1% of faiss KNN's",
                    "value": f"{100 * tr:.2f}% ({llsh['score_s']:.2f} s vs {knn['score_s']:.1f} s)",
                    "pass": bool(tr <= 0.01)})
        defined = llsh["macro_auc"] is not None and knn["macro_auc"] is not None  # None: no two-class video
        dm = llsh["macro_auc"] - knn["macro_auc"] if defined else None
        out.append({"target": "LLSH macro-AUC within 1 point of KNN (>= KNN - 0.01)",
                    "value": f"{_fmt_auc(llsh['macro_auc'])} vs {_fmt_auc(knn['macro_auc'])}"
                             + (f" ({100 * dm:+.2f} points)" if defined else ""),
                    "pass": bool(dm >= -0.01) if defined else None})
    if "llsh" in by:
        llsh = by["llsh"]
        others = [r for r in rows if r["key"].startswith("kmeans") or r["key"] == "lsh"]
        if others:
            worst = [f"{r['name']} {_fmt_auc(r['macro_auc'])}" for r in others]
            defined = all(r["macro_auc"] is not None for r in [llsh, *others])
            out.append({"target": "LLSH macro-AUC above both K-means rows and untrained LSH",
                        "value": f"LLSH {_fmt_auc(llsh['macro_auc'])} vs " + ", ".join(worst),
                        "pass": bool(all(llsh["macro_auc"] > r["macro_auc"] for r in others)) if defined else None})
    if "knn" in by and "llsh" in by and "light" in by:
        knn, llsh, light = by["knn"], by["llsh"], by["light"]
        # the paper's light-LLSH file against its KNN features (316 MB / 28 GB); the ratio depends on d
        # (KNN stores d floats per snippet, LLSH b*r codes): compare at the paper's d = 9216 (--dim)
        out.append({"target": "LLSH disk relative to KNN at most the paper's light-LLSH: 316 MB / 28 GB = 1.13%",
                    "value": f"LLSH {_fmt_bytes(llsh['disk_bytes'])} = {llsh['disk_pct_of_knn']:.2f}% of KNN "
                             f"({_fmt_bytes(knn['disk_bytes'])}); light-LLSH {_fmt_bytes(light['disk_bytes'])} = "
                             f"{light['disk_pct_of_knn']:.3f}%",
                    "pass": bool(llsh["disk_bytes"] <= PAPER["disk_ratio"] * knn["disk_bytes"])})
    return out


def _fmt_bytes(x: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= div:
            return f"{x / div:.3g} {unit}"
    return f"{int(x)} B"


def _fmt_mult(x: float) -> str:
    if x >= 1e9:
        return f"{x / 1e9:.3g}G"
    if x >= 1e6:
        return f"{x / 1e6:.3g}M"
    if x >= 1e3:
        return f"{x / 1e3:.3g}k"
    return f"{x:.3g}"


def render_markdown(res: dict) -> str:
    data, s = res["data"], res["settings"]
    lines = [
        f"Data: {res['dataset']} - N = {data['n_train']:,} training snippets ({data['n_train_videos']} videos), "
        f"M = {data['n_test']:,} test snippets ({data['n_test_videos']} videos), d = {data['dim']}; "
        f"b = {s['n_tables']}, r = {s['n_bits']}.",
        "",
        "| Method | macro-AUC | micro-AUC | mult./query (paper formula) | mult./query (counted) | % of KNN (formula) "
        "| disk | train s | build s | score s | peak RSS build / score (MB) | peak anon build / score (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        pct = "" if r["mults_formula_pct_of_knn"] is None else f"{r['mults_formula_pct_of_knn']:.3g}%"
        lines.append(
            f"| {r['name']} | {_fmt_auc(r['macro_auc'])} | {_fmt_auc(r['micro_auc'])} "
            f"| {_fmt_mult(r['mults_formula_per_query'])} | {_fmt_mult(r['mults_counted_per_query'])} | {pct} "
            f"| {_fmt_bytes(r['disk_bytes'])} "
            f"| {r['train_s']:.1f} | {r['build_s']:.1f} | {r['score_s']:.2f} "
            f"| {r['build_mem']['peak_rss_mb']:.0f} / {r['score_mem']['peak_rss_mb']:.0f} "
            f"| {r['build_mem']['peak_anon_mb']:.0f} / {r['score_mem']['peak_anon_mb']:.0f} |")
    lsh_rows = [r for r in res["rows"] if "compared_per_query" in r]
    if lsh_rows:
        lines += ["", "Stored codes (mean) / bucket means (light, squared) visited per query, n: " + ", ".join(
            f"{r['name']} {r['compared_per_query']:.1f}" for r in lsh_rows) + "."]
    if res.get("training"):
        t = res["training"]
        lines.append(f"LLSH training: {t['steps']} MoCo steps, {t['train_s']:.1f} s (counted once, shown on each trained "
                     f"row), loss {t['loss_first10']:.3f} -> {t['loss_last10']:.3f}.")
    r0 = res["rows"][0]
    lines.append(f"AUC: sigma {s['sigma']:g}; macro skips {r0['n_single_class']} single-class video(s) "
                 f"{r0['single_class_videos']}; micro pools all frames.")
    if res["targets"]:
        lines += ["", "| Target | Measured | Pass |", "|---|---|---|"]
        for t in res["targets"]:
            p = "n/a (reported)" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
            lines.append(f"| {t['target']} | {t['value']} | {p} |")
    m = res["machine"]
    lines += ["", f"Run: {res['started']} -> {res['finished']} ({res['wall_s']:.0f} s), {m['cores']}-core {m['cpu']}, "
                  f"no GPU, load average at start {tuple(round(x, 2) for x in m['loadavg']) if m['loadavg'] else 'n/a'}.",
              f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def plot(rows: List[dict], path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4))
    panels = (("mults_formula_per_query", "multiplications per query (paper formulas)"),
              ("disk_bytes", "disk: size of the saved model file (bytes)"))
    markers = "osDv^PX*<>"
    for ax, (key, xlabel) in zip(axes, panels):
        xs = [r[key] for r in rows]
        for i, r in enumerate(rows):  # distinct marker + legend: near-identical points stay identifiable
            if r["macro_auc"] is None:  # undefined: no point to draw (the tables say "undefined")
                continue
            ax.scatter([xs[i]], [r["macro_auc"]], s=60, color=f"C{i}", marker=markers[i % len(markers)],
                       zorder=3, alpha=0.85, edgecolors="k", linewidths=0.5,
                       label=f"{r['name']} ({_fmt_auc(r['macro_auc'], 3)})")
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 3, max(xs) * 3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("macro-AUC")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    # three columns: four clipped the longest names at the figure's edges
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(f"Table 2 reproduction{': ' + title if title else ''}", 130)), fontsize=9)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# --------------------------------------------------------------------------- inputs


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def prepare_features_dir(src: str, cache_dir: str, labels_path: Optional[str] = None,
                         snippet_frames: Optional[int] = None) -> str:
    """A bundle from --features DIR: used as is if it is one, else converted (streaming) into cache_dir.
    snippet_frames: K frames per test snippet (recorded with each test video; scores become per-frame)."""
    if os.path.exists(os.path.join(src, "manifest.json")):
        if snippet_frames is not None:  # a bundle's test rows are placed as it was written
            raise SystemExit(f"--snippet-frames: applies to a train/ + test/ folder, got a feature bundle ({src})")
        return src
    train_dir, test_dir = os.path.join(src, "train"), os.path.join(src, "test")
    if not (os.path.isdir(train_dir) and os.path.isdir(test_dir)):
        raise SystemExit(f"--features {src}: expected a feature bundle (manifest.json) or train/*.npy + test/*.npy "
                         "(see the module docstring)")
    labels_path = labels_path or os.path.join(src, "labels.npz")
    if not os.path.exists(labels_path):
        raise SystemExit(f"--features {src}: no frame labels at {labels_path} (pass --labels PATH)")
    from llsh_index.metrics import load_labels

    labels = load_labels(labels_path)
    trains = sorted((f for f in os.listdir(train_dir) if f.endswith(".npy")), key=_natural)
    tests = sorted((f for f in os.listdir(test_dir) if f.endswith(".npy")), key=_natural)
    if not trains or not tests:
        raise SystemExit(f"--features {src}: expected .npy files in train/ and test/, got {len(trains)} and {len(tests)}")
    sig = {"src": os.path.abspath(src), "labels": os.path.abspath(labels_path),
           "files": [[f, os.path.getsize(os.path.join(train_dir, f)), os.path.getmtime(os.path.join(train_dir, f))]
                     for f in trains] + [[f, os.path.getsize(os.path.join(test_dir, f))] for f in tests],
           "snippet_frames": snippet_frames}
    mpath = os.path.join(cache_dir, "manifest.json")
    if os.path.exists(mpath):
        with open(mpath) as f:
            if json.load(f).get("config") == {"features_dir": sig}:
                return cache_dir

    def shapes(folder, files):
        out = []
        for f in files:
            a = np.load(os.path.join(folder, f), mmap_mode="r")
            if a.ndim != 2:
                raise SystemExit(f"{os.path.join(folder, f)}: expected a 2-D (n, d) array, got shape {a.shape}")
            out.append(a.shape)
        return out

    tr_shapes, te_shapes = shapes(train_dir, trains), shapes(test_dir, tests)
    dims = {s[1] for s in tr_shapes + te_shapes}
    if len(dims) != 1:
        raise SystemExit(f"--features {src}: every array must have the same dimension, got {sorted(dims)}")
    d = dims.pop()
    names = [os.path.splitext(f)[0] for f in tests]
    from llsh_index.errors import InvalidInputError
    from llsh_index.feature_arrays import snippet_frame_index
    from llsh_index.metrics import LengthMismatchError, check_centre_alignment

    for nm, sh in zip(names, te_shapes):
        if nm not in labels:
            raise SystemExit(f"--features {src}: test video {nm!r} has no labels in {labels_path}")
        if snippet_frames is not None:  # the snippets must be the video's: refused as import refuses them
            try:
                snippet_frame_index(sh[0], snippet_frames, int(labels[nm].size), nm)
            except InvalidInputError as exc:
                raise SystemExit(f"--features {src} --snippet-frames {snippet_frames}: {exc}")
        elif sh[0] > labels[nm].size:
            raise SystemExit(f"test video {nm!r}: {sh[0]} snippets for {labels[nm].size} labelled frames")
    if snippet_frames is None:  # before the conversion and the runs: evaluate would refuse it after them
        try:
            check_centre_alignment({nm: sh[0] for nm, sh in zip(names, te_shapes)},
                                   {nm: labels[nm].size for nm in names})
        except LengthMismatchError as exc:
            raise SystemExit(f"--features {src}: {exc}; here: pass --snippet-frames K")
    os.makedirs(cache_dir, exist_ok=True)
    n, m = sum(s[0] for s in tr_shapes), sum(s[0] for s in te_shapes)
    tr = np.lib.format.open_memmap(os.path.join(cache_dir, "train_features.npy"), "w+", np.float32, (n, d))
    vids = np.empty(n, np.int32)
    train_videos, start = [], 0
    for i, (f, sh) in enumerate(zip(trains, tr_shapes)):
        a = np.load(os.path.join(train_dir, f), mmap_mode="r")
        for j in range(0, sh[0], _CHUNK_ROWS):
            tr[start + j:start + min(sh[0], j + _CHUNK_ROWS)] = a[j:j + _CHUNK_ROWS]
        vids[start:start + sh[0]] = i
        train_videos.append({"name": os.path.splitext(f)[0], "start": start, "count": int(sh[0])})
        start += sh[0]
    tr.flush()
    del tr
    np.save(os.path.join(cache_dir, "train_video_ids.npy"), vids)
    te = np.lib.format.open_memmap(os.path.join(cache_dir, "test_features.npy"), "w+", np.float32, (m, d))
    test_videos, start = [], 0
    for nm, f, sh in zip(names, tests, te_shapes):
        te[start:start + sh[0]] = np.load(os.path.join(test_dir, f), mmap_mode="r")
        test_videos.append({"name": nm, "start": start, "count": int(sh[0]), "n_frames": int(labels[nm].size),
                            **({"snippet_frames": int(snippet_frames)} if snippet_frames is not None else {})})
        start += sh[0]
    te.flush()
    del te
    np.savez(os.path.join(cache_dir, "labels.npz"), **{nm: labels[nm] for nm in names})
    synthetic.write_bundle_manifest(cache_dir, dim=d, train_videos=train_videos, test_videos=test_videos,
                                    source=f"features:{os.path.abspath(src)}", config={"features_dir": sig})
    return cache_dir


def prepare_ped2(path: str, cache_dir: str) -> str:
    """A bundle from the Ped2 demo features (llsh_index/data/ped2_demo.npz, read by
    llsh_index.datasets.load_ped2_demo): 16 training videos (a snippet every 2nd frame), 12 test
    videos (one snippet per frame, so scores align exactly), labels from ped2.mat."""
    if not os.path.exists(path):
        raise SystemExit(f"--ped2-features: {path} does not exist.  The Ped2 demo feature file is produced by "
                         "scripts/make_demo_features.py (llsh_index/data/ped2_demo.npz); run with --features DIR "
                         "or --synthetic meanwhile.")
    try:
        from llsh_index.datasets import load_ped2_demo
    except ImportError as exc:
        raise SystemExit(f"--ped2-features: llsh_index.datasets.load_ped2_demo is not available ({exc})")
    demo = load_ped2_demo(path)
    sig = {"ped2_demo": os.path.abspath(path), "size": os.path.getsize(path), "mtime": os.path.getmtime(path)}
    mpath = os.path.join(cache_dir, "manifest.json")
    if os.path.exists(mpath):
        with open(mpath) as f:
            if json.load(f).get("config") == sig:
                return cache_dir
    os.makedirs(cache_dir, exist_ok=True)
    trains = sorted(demo.train, key=_natural)
    tests = sorted(demo.test, key=_natural)
    d = demo.dim
    n, m = sum(demo.train[k].shape[0] for k in trains), sum(demo.test[k].shape[0] for k in tests)
    tr = np.lib.format.open_memmap(os.path.join(cache_dir, "train_features.npy"), "w+", np.float32, (n, d))
    vids = np.empty(n, np.int32)
    train_videos, start = [], 0
    for i, k in enumerate(trains):
        a = demo.train[k]
        tr[start:start + a.shape[0]] = a
        vids[start:start + a.shape[0]] = i
        train_videos.append({"name": k, "start": start, "count": int(a.shape[0])})
        start += a.shape[0]
    tr.flush()
    del tr
    np.save(os.path.join(cache_dir, "train_video_ids.npy"), vids)
    te = np.lib.format.open_memmap(os.path.join(cache_dir, "test_features.npy"), "w+", np.float32, (m, d))
    test_videos, start = [], 0
    for k in tests:
        a, lab = demo.test[k], demo.test_labels[k]
        if a.shape[0] > lab.size:
            raise SystemExit(f"{path}: test video {k!r} has {a.shape[0]} snippets for {lab.size} labelled frames")
        te[start:start + a.shape[0]] = a
        test_videos.append({"name": k, "start": start, "count": int(a.shape[0]), "n_frames": int(lab.size)})
        start += a.shape[0]
    te.flush()
    del te
    np.savez(os.path.join(cache_dir, "labels.npz"), **{k: np.asarray(demo.test_labels[k], np.uint8) for k in tests})
    synthetic.write_bundle_manifest(cache_dir, dim=d, train_videos=train_videos, test_videos=test_videos,
                                    source=f"ped2_demo:{os.path.abspath(path)}", config=sig)
    return cache_dir


# --------------------------------------------------------------------------- CLI


def main(argv: Optional[Sequence[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--synthetic", action="store_true", help="ShanghaiTech-shaped synthetic data (default)")
    src.add_argument("--features", metavar="DIR", help="features + labels on disk (layout in the docstring)")
    src.add_argument("--ped2-features", metavar="PATH", nargs="?", const=DEFAULT_PED2,
                     help=f"Ped2 features npz (default {os.path.relpath(DEFAULT_PED2, ROOT)})")
    ap.add_argument("--quick", action="store_true",
                    help="synthetic scale 0.01, every 3rd test video, 20 training iterations per video, 10 K-means "
                         "iterations, methods in-process (< 2 min)")
    ap.add_argument("--scale", type=positive_float, default=None, help="synthetic training size / 792,855 (default 0.1)")
    ap.add_argument("--dim", type=positive_int, default=512, help="synthetic feature dimension")
    ap.add_argument("--labels", help="frame-label npz for --features (default DIR/labels.npz); for --synthetic the "
                                     "test layout (default ../shared/data/vad_groundtruth/ST_gt.npz)")
    ap.add_argument("--snippet-frames", type=positive_int, default=None, metavar="K",
                    help="with --features: each test snippet covers K frames (I3D: 16); its score is spread over "
                         "them as `llsh-index import --snippet-frames K` + `score` do (the AUC then on per-frame "
                         "scores); without it, fewer snippets than frames are placed centred, one per start position")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=output_folder, default=None, help="output folder (default benchmarks/out/table2[_ped2|_features][_quick])")
    ap.add_argument("--data-dir", default=None, help="where the synthetic / converted bundle is cached")
    ap.add_argument("--iterations", type=positive_int, default=None, help="MoCo iterations per training video (paper: 60)")
    ap.add_argument("--epochs", type=positive_int, default=1)
    ap.add_argument("--batch-size", type=positive_int, default=None,
                    help="MoCo batch (paper: ST 256, Avenue 32; default 256, Ped2 32)")
    ap.add_argument("--queue-size", type=positive_int, default=None,
                    help="MoCo queue (paper: ST 8192, Avenue 2048; default 8192, Ped2 2048)")
    ap.add_argument("--knn-k", type=positive_int, default=1024)
    ap.add_argument("--kmeans-ks", type=int_list(1), default=[32, 256], help="K of each K-means row")
    ap.add_argument("--kmeans-iter", type=positive_int, default=None, help="K-means iterations (default 25; quick 10)")
    ap.add_argument("--methods", default=None,
                    help="comma-separated subset of: knn,kmeans<K>,lsh,llsh,light,squared (with --probes also "
                         "lsh_probes,llsh_probes; with --miss-probes or --reduce mean also llsh_ours)")
    ap.add_argument("--project-pcs", type=nonnegative_int, default=0,
                    help="> 0: train LLSH with project_pcs=K and project_mean (ours; the static-data fallback's "
                         "projection, llsh_index.training); 0 = the paper")
    ap.add_argument("--centre-layers", action="store_true",
                    help="train LLSH with centre_layers (ours: the hyperplanes pass through the data's mean, so "
                         "every bit splits the normal data; with --project-pcs it keeps the buckets small)")
    ap.add_argument("--n-bits", type=positive_int, default=32, help="r, bits per table (default 32, the paper's)")
    ap.add_argument("--code-dtype", choices=("float32", "float16"), default="float32",
                    help="stored codes of the LSH-family rows (float16: half the memory and file; ours)")
    ap.add_argument("--probes", type=nonnegative_int, default=0,
                    help="> 1: add LSH and LLSH rows scored with this many probes per table (multi-probe, ours)")
    ap.add_argument("--miss-probes", type=nonnegative_int, default=0,
                    help="> 1: add an LLSH row probing this many buckets per table for the queries that miss every "
                         "table (ours)")
    ap.add_argument("--reduce", choices=("min", "mean"), default="min",
                    help="mean: that LLSH row (added) takes the mean over the tables that hit (ours)")
    iso = ap.add_mutually_exclusive_group()
    iso.add_argument("--no-isolate", action="store_true",
                     help="run every method in this process (faster; peak memory less clean; default with --quick)")
    iso.add_argument("--isolate", action="store_true", help="one subprocess per method (default without --quick)")
    ap.add_argument("--test-every", type=positive_int, default=None,
                    help="synthetic: keep every K-th test video of the layout (default 1; quick 3)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker_main(args.worker)
        return {}

    if args.snippet_frames is not None and not args.features:
        ap.error("--snippet-frames applies to --features DIR (the synthetic and Ped2 demo test sets have one "
                 "snippet per start position / frame)")
    command = "python benchmarks/table2.py " + " ".join(sys.argv[1:] if argv is None else argv)
    quick = args.quick
    suffix = "_ped2" if args.ped2_features else "_features" if args.features else ""
    out = args.out or os.path.join(ROOT, "benchmarks", "out", "table2" + suffix + ("_quick" if quick else ""))
    os.makedirs(out, exist_ok=True)
    s = Settings(knn_k=args.knn_k, kmeans_ks=tuple(args.kmeans_ks),
                 kmeans_iter=args.kmeans_iter or (10 if quick else 25),
                 iterations=args.iterations or (20 if quick else 60), epochs=args.epochs, seed=args.seed,
                 batch_size=args.batch_size or (32 if args.ped2_features else 256),
                 queue_size=args.queue_size or (2048 if args.ped2_features else 8192),
                 isolate=args.isolate or not (args.no_isolate or quick),
                 methods=None if args.methods is None else args.methods.split(","), probes=args.probes,
                 miss_probes=args.miss_probes, reduce=args.reduce,
                 project_pcs=args.project_pcs, centre_layers=args.centre_layers, n_bits=args.n_bits,
                 code_dtype=args.code_dtype)
    progress = not args.no_progress
    if args.features:
        bundle = prepare_features_dir(args.features, args.data_dir or os.path.join(out, "data", "features"),
                                      args.labels, args.snippet_frames)
        dataset = f"features from {args.features}"
    elif args.ped2_features:
        bundle = prepare_ped2(args.ped2_features, args.data_dir or os.path.join(out, "data", "ped2"))
        dataset = "UCSD Ped2 demo features (llsh_index/data/ped2_demo.npz, EfficientNet-Lite0, d=2560)"
    else:
        scale = args.scale if args.scale is not None else (0.01 if quick else 0.1)
        every = args.test_every if args.test_every is not None else (3 if quick else 1)
        try:
            labels = synthetic.load_st_layout(args.labels)
        except FileNotFoundError as exc:
            raise SystemExit(str(exc))
        subset = None if every == 1 else tuple(sorted(labels)[::every])
        cfg = synthetic.SyntheticConfig(scale=scale, dim=args.dim, seed=args.seed, test_videos=subset)
        bundle = args.data_dir or os.path.join(
            out, "data", f"synthetic_s{scale:g}_d{args.dim}_seed{args.seed}" + (f"_every{every}" if subset else ""))
        t0 = time.perf_counter()
        synthetic.generate(bundle, labels, cfg, progress=progress)
        print(f"[table2] synthetic bundle ready in {time.perf_counter() - t0:.1f} s: {bundle}")
        dataset = (f"synthetic ShanghaiTech-shaped (llsh_index.synthetic, scale {scale:g} of N=792,855, d={args.dim}, "
                   f"seed {args.seed}; real ST_gt test layout" + (f", one test video in {every}" if subset else "")
                   + ")")
    return run_table2(bundle, out, s, command=command, dataset=dataset, progress=progress)


if __name__ == "__main__":
    main()
