"""Live scoring (llsh_index.stream.StreamScorer) against the offline pipeline, on Ped2 test videos.

Per video: the offline pipeline (extract_video with T 16, clamp, the index's score, Gaussian
smoothing, the way `llsh-index extract / score / evaluate` compute it) and the stream (frames pushed
one at a time, and in batches of --batch frames, then flush), timed in the same run on the same
frames; the ratio is stream time / offline time, so the machine's speed cancels.  Also: how far the
stream's scores are from the offline ones (the CNN runs on 1 frame or --batch frames at a time
instead of 16: float rounding), and the latency in frames.  The index is the Ped2 demo's LLSH (its
training schedule and seed 0, on the embedded features).

    python benchmarks/bench_stream.py                       # test videos 01, 02; needs ../shared/data/ped2
    python benchmarks/bench_stream.py --videos 01 --threads 2
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from llsh_index import LearnableLSHIndex, metrics
from llsh_index.cli import DEMO_TRAINING, positive_int
from llsh_index.datasets import load_ped2_demo
from llsh_index.stream import StreamScorer
from llsh_index.video import EfficientNetLite0Extractor, iter_frames

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ped2" / "testing" / "frames"


def stream(scorer, frames, batch):
    t0 = time.perf_counter()
    outs = [scorer.push(frames[i] if batch == 1 else frames[i:i + batch]) for i in range(0, len(frames), batch)]
    outs.append(scorer.flush())
    return time.perf_counter() - t0, np.concatenate([o.scores for o in outs])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", default="01,02", help="comma-separated Ped2 test videos")
    ap.add_argument("--batch", type=positive_int, default=8, help="frames per push in the batched stream")
    ap.add_argument("--threads", type=positive_int, default=None, help="CPU threads for the CNN (default: all)")
    ap.add_argument("--root", default=str(ROOT), help="Ped2 testing/frames folder")
    args = ap.parse_args()
    if not os.path.isdir(args.root):
        raise SystemExit(f"Ped2 test frames not found at {args.root} (see ../shared/data/README.md)")
    if args.threads:
        torch.set_num_threads(args.threads)
    demo = load_ped2_demo()
    names = sorted(demo.train)
    x = np.concatenate([demo.train[v] for v in names]).astype(np.float32)
    vid = np.concatenate([np.full(len(demo.train[v]), i) for i, v in enumerate(names)])
    index = LearnableLSHIndex(x.shape[1], seed=0)
    index.fit(x, video_ids=vid, progress=False, **DEMO_TRAINING)
    index.add(x)
    ext = EfficientNetLite0Extractor(num_threads=args.threads)
    scorer = StreamScorer(index, ext)
    ext.extract(np.zeros((1, 1, 240, 360, 3), np.uint8))  # load the weights before timing
    print(f"Ped2 demo LLSH (seed 0), EfficientNet-Lite0 T 16, sigma 12, torch threads {torch.get_num_threads()}; "
          f"latency {scorer.latency} frames (causal smoothing: {StreamScorer(index, ext, smoothing='causal').latency})\n")
    print(f"| video | frames | offline s | stream, 1 frame per push: s, ratio, frames/s | stream, {args.batch} per "
          f"push: s, ratio | max abs diff of scores (score range) |")
    print("|---|---|---|---|---|---|")
    for v in [v.strip() for v in args.videos.split(",") if v.strip()]:
        frames = np.stack(list(iter_frames(os.path.join(args.root, v))))
        t0 = time.perf_counter()
        feats = ext.extract_video(iter(frames), 16, 1, clamp=True, n_frames=len(frames))
        offline = metrics.smooth_scores(index.score(feats), 12)
        t_off = time.perf_counter() - t0
        t_one, s_one = stream(scorer, frames, 1)
        t_bat, s_bat = stream(scorer, frames, args.batch)
        diff = max(np.abs(s_one - offline).max(), np.abs(s_bat - offline).max())
        print(f"| {v} | {len(frames)} | {t_off:.2f} | {t_one:.2f}, {t_one / t_off:.2f}x, {len(frames) / t_one:.1f} | "
              f"{t_bat:.2f}, {t_bat / t_off:.2f}x | {diff:.2g} ({np.ptp(offline):.3g}) |")


if __name__ == "__main__":
    main()
