#!/usr/bin/env python
"""Regenerates the bundled UCSD Ped2 demo features, llsh_index/data/ped2_demo.npz.

    python scripts/make_demo_features.py                       # ../shared/data/ped2 -> llsh_index/data/
    python scripts/make_demo_features.py --data /path/to/ped2 --cache-dir /tmp/ped2_feats

What it does: extracts snippet features of all 2,550 training and 2,010 test frames with the
default extractor (EfficientNet-Lite0, head activations averaged onto a 2 x 1 grid, averaged over
T=16 consecutive frames; one snippet per frame, ``clamp=True``), then writes one compressed
float16 feature file holding

* ``train/<video>``: every ``--train-stride``-th training snippet (consecutive snippets share
  15 of 16 frames, so this loses almost nothing and keeps the file under 15 MB);
* ``test/<video>``: every test snippet (one per frame) and the per-frame 0/1 labels;
* the frame each snippet is aligned to, and the settings (meta), incl. the extraction speed.

Read it back with ``llsh_index.datasets.load_ped2_demo()``.  ``--check`` also prints the exact
k-NN micro-AUC (mean cosine distance to the k nearest training snippets, Gaussian sigma=12,
per-video min-max, frames concatenated) of the full and of the demo features.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llsh_index.datasets import PED2_DEMO_PATH, load_ped2  # noqa: E402
from llsh_index.video import (EfficientNetLite0Extractor, default_num_threads, extract_dataset,  # noqa: E402
                              load_feature_file, save_features)

MAX_BYTES = 15 * 1024 * 1024


def knn_micro_auc(train: dict, test: dict, labels: dict, ks=(1, 4, 16, 64), sigma=12.0) -> dict:
    """Exact k-NN (cosine) micro-AUC; test features must be one snippet per frame."""
    import torch
    from scipy.ndimage import gaussian_filter1d
    from sklearn.metrics import roc_auc_score

    def unit(x):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    tr = unit(np.concatenate(list(train.values())))
    names = list(test)
    sims = unit(np.concatenate([test[n] for n in names])) @ tr.T
    top = sims.topk(max(ks), dim=1).values
    bounds = np.cumsum([len(test[n]) for n in names])[:-1]
    out = {}
    for k in ks:
        dist = (1 - top[:, :k]).mean(1).numpy().astype(np.float64)
        scores, labs = [], []
        for n, d in zip(names, np.split(dist, bounds)):
            d = gaussian_filter1d(d, sigma)
            if d.max() > d.min():
                d = (d - d.min()) / (d.max() - d.min())
            scores.append(d)
            labs.append(labels[n])
        out[k] = float(roc_auc_score(np.concatenate(labs), np.concatenate(scores)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ped2"), help="UCSD Ped2 root folder")
    ap.add_argument("--out", default=str(PED2_DEMO_PATH), help="output .npz")
    ap.add_argument("--T", type=int, default=16, help="frames per snippet")
    ap.add_argument("--s", type=int, default=1, help="sampling interval between snippet frames")
    ap.add_argument("--train-stride", type=int, default=2, help="keep every n-th training snippet in the demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    ap.add_argument("--cache-dir", default=None, help="keep the full float32 features here (train.npz, test.npz)")
    ap.add_argument("--check", action="store_true", help="print exact k-NN micro-AUCs")
    args = ap.parse_args(argv)

    train_ds = load_ped2(args.data, "training")
    test_ds = load_ped2(args.data, "testing")
    ex = EfficientNetLite0Extractor(device=args.device, batch_size=args.batch_size, num_threads=args.threads)
    threads = args.threads or default_num_threads()

    feats, timing = {}, {}
    for split, ds in (("train", train_ds), ("test", test_ds)):
        cache = os.path.join(args.cache_dir, f"{split}.npz") if args.cache_dir else None
        if cache and os.path.exists(cache):
            os.remove(cache)  # always re-extract: the point is to measure and regenerate
        t0, c0 = time.perf_counter(), time.process_time()
        f, meta = extract_dataset(ds, ex, T=args.T, s=args.s, clamp=True, cache=cache)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        feats[split] = f
        timing[split] = {"frames": ds.n_frames, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                         "frames_per_s": round(ds.n_frames / wall, 1)}
        print(f"{split}: {ds.n_frames} frames in {wall:.1f} s wall ({ds.n_frames / wall:.1f} frames/s), "
              f"{cpu:.1f} s CPU on {threads} threads", flush=True)
    n_all = train_ds.n_frames + test_ds.n_frames
    wall_all = sum(t["wall_s"] for t in timing.values())
    print(f"all: {n_all} frames in {wall_all:.1f} s ({n_all / wall_all:.1f} frames/s)")

    stride = max(1, args.train_stride)
    demo, fidx, labels, n_frames = {}, {}, {}, {}
    for v in train_ds:
        demo[f"train/{v.name}"] = feats["train"][v.name][::stride]
        fidx[f"train/{v.name}"] = np.arange(v.n_frames)[::stride]
        n_frames[f"train/{v.name}"] = v.n_frames
    for v in test_ds:
        demo[f"test/{v.name}"] = feats["test"][v.name]
        fidx[f"test/{v.name}"] = np.arange(v.n_frames)
        labels[f"test/{v.name}"] = v.labels
        n_frames[f"test/{v.name}"] = v.n_frames
    meta = dict(ex.describe(), T=args.T, s=args.s, clamp=True, dataset="UCSD Ped2",
                splits={"train": train_ds.names, "test": test_ds.names}, train_snippet_stride=stride,
                labels="test videos: 1 = anomalous frame, from ped2.mat (1-based inclusive ranges)",
                extraction={"device": args.device, "threads": threads, "batch_size": args.batch_size, **timing},
                made_by="scripts/make_demo_features.py")
    size = save_features(args.out, demo, meta, labels_by_video=labels, frame_index_by_video=fidx,
                         n_frames_by_video=n_frames, dtype="float16", compress=True)
    print(f"wrote {args.out}: {size / 1e6:.2f} MB ({len(demo)} videos, dim {ex.dim})")
    if size > MAX_BYTES:
        print(f"error: {args.out} is larger than {MAX_BYTES / 2**20:.0f} MiB; raise --train-stride", file=sys.stderr)
        return 1

    if args.check:
        full = knn_micro_auc(feats["train"], feats["test"], test_ds.labels_by_video())
        ff = load_feature_file(args.out)
        tr = {k: v for k, v in ff.features.items() if k.startswith("train/")}
        te = {k.split("/", 1)[1]: v for k, v in ff.features.items() if k.startswith("test/")}
        small = knn_micro_auc(tr, te, test_ds.labels_by_video())
        print("exact k-NN micro-AUC, full features: " + json.dumps({k: round(v * 100, 2) for k, v in full.items()}))
        print("exact k-NN micro-AUC, demo file:     " + json.dumps({k: round(v * 100, 2) for k, v in small.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
