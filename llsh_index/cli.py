"""The `llsh-index` command line: videos -> features -> hash layers -> index -> scores -> AUC and plots.

    llsh-index demo                                   # the whole path on the bundled Ped2 features
    llsh-index extract --dataset ped2 --root ../shared/data/ped2 --split train --out train.npz
    llsh-index fit --features train.npz --out layers.llsh
    llsh-index build --model layers.llsh --features train.npz --out index.llsh
    llsh-index score --index index.llsh --features test.npz --out scores.npz [--csv scores.csv]
    llsh-index evaluate --scores scores.npz --labels test.npz
    llsh-index plot --scores scores.npz --labels test.npz --out curves.png

Feature files are the pickle-free .npz of llsh_index.video.save_features (per-video arrays, labels
and the frame each snippet is aligned to).  Score files are .npz with one per-frame float32 array
per video (np.load reads them, no pickle).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import NPZ_READ_ERRORS, ConfigError, IndexFormatError, InvalidInputError

# The demo's training schedule.  The paper's (lr 1e-3, 60 iterations per video) is sized for
# ShanghaiTech's 330 long training videos; Ped2 has 16 short ones, so the bundled demo trains longer
# with a larger step and a faster key encoder (chosen by measured micro-AUC on Ped2, README).  The
# projection of the 30 main principal directions (and the mean's) is the static-data fallback's,
# chosen on ADBench categories (benchmarks/RESULTS.md), not on Ped2.
DEMO_TRAINING = dict(iterations=2000, lr=0.2, momentum=0.99, queue_size=2048, batch_size=256, max_offset=150,
                     temperature=0.1, project_pcs=30, project_mean=True)
DEMO_KNN_K = 1
DEMO_PROBES = 32  # the multi-probe rows (ours): buckets probed per table (on a miss: of every table)
DEMO_KMEANS_K = 32


# ---------------------------------------------------------------------- helpers
def positive_int(text: str) -> int:
    """argparse type for sizes and counts (the benchmarks use it too): 0 or -5 fail at parsing with
    argparse's usage message, not as a numpy / torch traceback later."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0)


def int_list(low: int = 0):
    """argparse type for comma-separated integers >= low (e.g. type=int_list(1) for --probes 1,4,8)."""
    def parse(text: str) -> List[int]:
        parts = [p for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}")
        return [_int_at_least(p, low) for p in parts]
    return parse


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def _load_feature_file(path: str):
    from .video import load_feature_file

    return load_feature_file(path)


def _select(ff, prefix: Optional[str]) -> List[str]:
    names = [v for v in ff.videos if prefix is None or v.startswith(prefix)]
    if not names:
        raise InvalidInputError(f"no video in {ff.meta.get('videos', [])[:3]}... matches prefix {prefix!r}")
    return names


def _stack(ff, names: Sequence[str]):
    x = np.concatenate([ff.features[v] for v in names]).astype(np.float32)
    vids = np.concatenate([np.full(len(ff.features[v]), i) for i, v in enumerate(names)])
    return x, vids


def frame_scores(snippet_scores: np.ndarray, frame_index: Optional[np.ndarray], n_frames: Optional[int]) -> np.ndarray:
    """Per-frame scores of one video from per-snippet scores.

    With the frame each snippet is aligned to, frames between two snippets take the linear
    interpolation of their scores (frames before the first / after the last take its score).
    Without it, one snippet per frame is required.
    """
    s = np.asarray(snippet_scores, dtype=np.float64)
    if frame_index is None or n_frames is None:
        return s.astype(np.float32)
    return np.interp(np.arange(n_frames), np.asarray(frame_index, np.float64), s).astype(np.float32)


def _save_scores(path: str, scores: Dict[str, np.ndarray], meta: dict) -> None:
    from .io import atomic_write

    with atomic_write(path) as f:
        np.savez(f, __meta__=np.array(json.dumps(meta)), **scores)


def _write_text(path: str, text: str) -> None:
    """A CSV / JSON output, written like every other file of the package (atomically, checked path)."""
    from .io import atomic_write

    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def _open_npz(path: str, what: str):
    """np.load of an .npz the command reads, with a missing, damaged or foreign file named as such."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except NPZ_READ_ERRORS as exc:
        raise IndexFormatError(f"{path}: not a readable {what} file (.npz): {exc}") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise IndexFormatError(f"{path}: expected an .npz {what} file, got a single .npy array")
    return z


def _load_scores(path: str) -> Dict[str, np.ndarray]:
    with _open_npz(path, "score") as z:
        try:
            scores = {k: z[k] for k in z.files if k != "__meta__"}
        except NPZ_READ_ERRORS as exc:
            raise IndexFormatError(f"{path}: damaged score file: {exc}") from exc
    if not scores:
        raise InvalidInputError(f"{path}: holds no per-video scores")
    return scores


def _load_labels(path: str) -> Dict[str, np.ndarray]:
    """Per-frame labels from a label .npz (vad_groundtruth layout) or a feature file with labels."""
    from . import metrics

    with _open_npz(path, "label") as z:
        is_feature_file = "meta" in z.files and "features_00000" in z.files
    if is_feature_file:
        ff = _load_feature_file(path)
        if not ff.labels:
            raise InvalidInputError(f"{path}: a feature file without labels")
        return dict(ff.labels)
    return metrics.load_labels(path)


def _given_index_options(args) -> dict:
    """The index options given on the command line (left out: None, so build --model can tell)."""
    given = {k: getattr(args, k) for k in ("n_tables", "n_bits", "mode", "code_dtype") if getattr(args, k) is not None}
    if "mode" in given:  # light and squared keep bucket statistics only
        given["store_codes"] = given["mode"] == "mean"
    return given


def _index_from_args(args, dim: Optional[int] = None):
    from . import LearnableLSHIndex

    return LearnableLSHIndex(dim, seed=args.seed, **_given_index_options(args))  # the rest: its defaults


def _index_like_model(model, args):
    """An empty index on the model's layers; --mode / --code-dtype given on the command line apply,
    --n-tables / --n-bits must agree with the layers (they cannot be changed without refitting)."""
    given = _given_index_options(args)
    for name in ("n_tables", "n_bits"):
        value = given.pop(name, None)
        if value is not None and value != getattr(model, name):
            raise ConfigError(f"--{name.replace('_', '-')} {value} does not match the model's layers "
                              f"({name} = {getattr(model, name)}); leave it out or refit")
    return model.empty_like(**given)


def _add_index_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-tables", type=int, default=None,
                   help="b, number of hash tables (default 8; build --model: the layers')")
    p.add_argument("--n-bits", type=int, default=None,
                   help="r, bits per key, 1..64 (default 32; build --model: the layers')")
    p.add_argument("--mode", choices=["mean", "light", "squared"], default=None,
                   help="score: mean L2 to the bucket (LLSH, default), distance to its mean (light), mean squared "
                        "L2; light and squared keep bucket statistics only")
    p.add_argument("--code-dtype", choices=["float32", "float16"], default=None,
                   help="stored codes (mean mode): float16 halves the index in memory and on disk (default float32)")
    p.add_argument("--seed", type=int, default=0)


def _add_training_args(p: argparse.ArgumentParser, defaults: dict) -> None:
    p.add_argument("--iterations", type=int, default=defaults["iterations"],
                   help="one epoch = n_videos x iterations pairs")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=defaults["lr"])
    p.add_argument("--momentum", type=float, default=defaults["momentum"], help="key-encoder EMA")
    p.add_argument("--queue-size", type=int, default=defaults["queue_size"])
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    p.add_argument("--max-offset", type=int, default=defaults["max_offset"], help="positives within +-this")
    p.add_argument("--temperature", type=float, default=defaults["temperature"])
    p.add_argument("--project-pcs", type=int, default=0,
                   help="ours: the layers lose the data's top-K principal directions (the demo uses 30; 0 = paper)")
    p.add_argument("--project-mean", action="store_true",
                   help="ours: keep the gradient off the data's mean direction (the demo uses it)")
    p.add_argument("--centre-layers", action="store_true",
                   help="ours: remove the data's mean direction from the layers too, so every bit splits the "
                        "training data (for large training sets; see benchmarks/RESULTS.md, Table 2)")


def _training_kwargs(args) -> dict:
    return dict(iterations=args.iterations, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
                queue_size=args.queue_size, batch_size=args.batch_size, max_offset=args.max_offset,
                temperature=args.temperature, project_pcs=args.project_pcs, project_mean=args.project_mean,
                centre_layers=args.centre_layers)


# ---------------------------------------------------------------------- subcommands
def cmd_extract(args) -> int:
    from . import datasets, video

    loaders = {"ped2": datasets.load_ped2, "avenue": datasets.load_avenue,
               "shanghaitech": datasets.load_shanghaitech, "folders": datasets.load_frame_folders}
    split = {"train": "training", "test": "testing"}[args.split]
    if args.dataset == "folders":
        ds = datasets.load_frame_folders(args.root)
    else:
        ds = loaders[args.dataset](args.root, split)
    extractor = video.EfficientNetLite0Extractor(device=args.device) if args.device else None
    t0 = time.time()
    feats, meta = video.extract_dataset(ds, extractor, T=args.T, s=args.s, cache=args.out,
                                        progress=not args.quiet)
    n = sum(len(v) for v in feats.values())
    print(f"{len(feats)} videos, {n} snippets, dim {meta.get('dim')} -> {args.out} ({time.time() - t0:.1f}s)")
    return 0


def cmd_fit(args) -> int:
    ff = _load_feature_file(args.features)
    names = _select(ff, args.prefix)
    x, vids = _stack(ff, names)
    index = _index_from_args(args, x.shape[1])
    index.fit(x, video_ids=vids, progress=not args.quiet, **_training_kwargs(args))
    size = index.save(args.out)
    log = index.training_log_
    print(f"trained on {len(x)} snippets of {len(names)} videos: {log.steps} steps, loss "
          f"{log.losses[0]:.3f} -> {np.mean(log.losses[-10:]):.3f}; saved {args.out} ({size} bytes)")
    return 0


def cmd_build(args) -> int:
    from . import LearnableLSHIndex

    ff = _load_feature_file(args.features)
    x, _ = _stack(ff, _select(ff, args.prefix))
    if args.model:
        index = _index_like_model(LearnableLSHIndex.load(args.model), args)
    else:
        index = _index_from_args(args, x.shape[1])
    t0 = time.time()
    index.add(x, progress=not args.quiet)
    size = index.save(args.out)
    print(f"indexed {index.ntotal} snippets in {time.time() - t0:.2f}s; buckets per table "
          f"{index.stats()['n_buckets']}; saved {args.out} ({size} bytes)")
    return 0


def cmd_score(args) -> int:
    from . import LearnableLSHIndex

    index = LearnableLSHIndex.load(args.index)
    ff = _load_feature_file(args.features)
    names = _select(ff, args.prefix)
    out, t0 = {}, time.time()
    for v in names:
        s = index.score(ff.features[v], mode=args.mode_override, n_probes=args.probes, miss_probes=args.miss_probes,
                        reduce=args.reduce)
        out[v] = frame_scores(s, ff.frame_index.get(v), ff.n_frames.get(v))
    _save_scores(args.out, out, {"index": os.path.abspath(args.index), "features": os.path.abspath(args.features),
                                 "mode": args.mode_override or index.mode, "n_probes": args.probes,
                                 "miss_probes": args.miss_probes, "reduce": args.reduce})
    print(f"scored {len(names)} videos in {time.time() - t0:.2f}s -> {args.out}")
    if args.csv:
        _write_text(args.csv, "video,frame,score\n" + "".join(
            f"{v},{i},{val:.6g}\n" for v, s in out.items() for i, val in enumerate(s)))
        print(f"-> {args.csv}")
    return 0


def cmd_evaluate(args) -> int:
    from . import metrics

    scores = _load_scores(args.scores)
    labels = _load_labels(args.labels)
    res = metrics.evaluate(scores, labels, sigma=args.sigma)
    print(f"micro-AUC {res.micro.auc:.4f}  macro-AUC {res.macro.auc:.4f}  "
          f"({res.macro.n_videos} videos, {res.macro.n_single_class} single-class skipped in macro; sigma {args.sigma})")
    if args.json:
        _write_text(args.json, json.dumps({"micro_auc": res.micro.auc, "macro_auc": res.macro.auc,
                                           "n_single_class": res.macro.n_single_class}, indent=1))
    return 0


def plot_curves(path: str, curves: Dict[str, Dict[str, np.ndarray]], labels: Dict[str, np.ndarray],
                videos: Sequence[str], sigma: float = 12, title: str = "") -> None:
    """Per-video score curves (smoothed, min-max normalised) with the anomalous frames shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import smooth_scores

    fmt = os.path.splitext(path)[1][1:].lower()
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()  # a detached figure: pyplot's are left alone
    if fmt not in formats:
        raise ConfigError(f"plot: {path!r} has no image extension matplotlib writes; expected one of "
                          f"{', '.join(sorted('.' + k for k in formats))}")
    fig, axes = plt.subplots(len(videos), 1, figsize=(9, 1.9 * len(videos)), squeeze=False)
    for ax, v in zip(axes[:, 0], videos):
        lab = labels[v].astype(bool)
        edges = np.flatnonzero(np.diff(np.r_[0, lab.astype(int), 0]))
        for a, b in zip(edges[::2], edges[1::2]):
            ax.axvspan(a, b - 1, color="tab:red", alpha=0.15, lw=0)
        for name, per_video in curves.items():
            s = smooth_scores(per_video[v], sigma)
            rng = s.max() - s.min()
            ax.plot((s - s.min()) / rng if rng > 0 else s * 0, lw=1.3, label=name)
        ax.set_ylabel(v, rotation=0, ha="right", va="center")
        ax.set_xlim(0, len(lab) - 1)
        ax.set_yticks([])
    axes[0, 0].legend(loc="upper left", fontsize=8, ncol=len(curves))
    axes[-1, 0].set_xlabel("frame (shaded: labelled anomalous)")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    from .io import atomic_write

    try:
        with atomic_write(path) as f:
            fig.savefig(f, format=fmt, dpi=110)
    finally:
        plt.close(fig)


def cmd_plot(args) -> int:
    scores = _load_scores(args.scores)
    labels = _load_labels(args.labels)
    videos = args.videos.split(",") if args.videos else [v for v in scores if v in labels][:6]
    missing = [v for v in videos if v not in scores or v not in labels]
    if missing:
        raise InvalidInputError(f"no scores or labels for videos {missing}")
    plot_curves(args.out, {os.path.basename(args.scores): scores}, labels, videos, args.sigma)
    print(f"-> {args.out}")
    return 0


def run_demo(out_dir: str, features: Optional[str] = None, training: Optional[dict] = None,
             quiet: bool = False, seed: int = 0) -> dict:
    """LSH / LLSH / light-LLSH / KNN / K-means on the bundled Ped2 features; returns the table."""
    from . import LearnableLSHIndex, metrics
    from .datasets import load_ped2_demo

    training = dict(DEMO_TRAINING, **(training or {}))
    demo = load_ped2_demo(features)
    train_names = sorted(demo.train)
    x = np.concatenate([demo.train[v] for v in train_names]).astype(np.float32)
    vids = np.concatenate([np.full(len(demo.train[v]), i) for i, v in enumerate(train_names)])
    test_names = sorted(demo.test)
    labels = {v: demo.test_labels[v] for v in test_names}
    n_frames = {v: len(labels[v]) for v in test_names}

    def per_video(score_fn):
        t0 = time.perf_counter()
        out = {v: frame_scores(np.asarray(score_fn(demo.test[v])), demo.frame_index["test"].get(v), n_frames[v])
               for v in test_names}
        return out, time.perf_counter() - t0

    rows, curves = [], {}

    def record(name, train_s, build_s, scores, score_s):
        res = metrics.evaluate(scores, labels, sigma=12)
        rows.append({"method": name, "micro_auc": res.micro.auc, "macro_auc": res.macro.auc, "train_s": train_s,
                     "build_s": build_s, "score_s": score_s})
        curves[name] = scores
        if not quiet:
            print(f"  {name:<12s} micro {res.micro.auc:.4f}  macro {res.macro.auc:.4f}", flush=True)

    if not quiet:
        print(f"Ped2 demo features: {len(x)} training snippets of {len(train_names)} videos, "
              f"{sum(n_frames.values())} test frames of {len(test_names)} videos, dim {x.shape[1]}")
    lsh = LearnableLSHIndex(x.shape[1], seed=seed)  # the LSH and LLSH indexes share their initial layers
    t0 = time.perf_counter()
    lsh.add(x)
    build = time.perf_counter() - t0
    s, t = per_video(lsh.score)
    record("LSH", 0.0, build, s, t)

    llsh = LearnableLSHIndex(x.shape[1], seed=seed)
    t0 = time.perf_counter()
    llsh.fit(x, video_ids=vids, progress=not quiet, **training)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    llsh.add(x)
    build = time.perf_counter() - t0
    s, t = per_video(llsh.score)
    record("LLSH", train_s, build, s, t)
    os.makedirs(out_dir, exist_ok=True)
    llsh.save(os.path.join(out_dir, "ped2_llsh.llsh"))

    light = llsh.empty_like(mode="light", store_codes=False)  # the trained layers, bucket means only
    t0 = time.perf_counter()
    light.add(x)
    build = time.perf_counter() - t0
    s, t = per_video(light.score)
    record("light-LLSH", train_s, build, s, t)
    for name, index in (("LSH", lsh), ("LLSH", llsh)):  # the same indexes, multi-probe (llsh_index.probing)
        s, t = per_video(lambda q: index.score(q, n_probes=DEMO_PROBES))
        record(f"{name}, {DEMO_PROBES} probes", train_s if index is llsh else 0.0, 0.0, s, t)
    s, t = per_video(lambda q: llsh.score(q, miss_probes=DEMO_PROBES))  # probes only for snippets missing every table
    record(f"LLSH, {DEMO_PROBES} probes on a miss", train_s, 0.0, s, t)

    try:
        from .baselines import KMeansScorer, KNNScorer
    except ImportError as exc:  # faiss is an optional dependency
        print(f"  (KNN and K-means skipped: {exc}; pip install faiss-cpu)")
    else:
        for name, scorer in ((f"KNN k={DEMO_KNN_K}", KNNScorer(k=DEMO_KNN_K)),
                             (f"K-means K={DEMO_KMEANS_K}", KMeansScorer(n_clusters=DEMO_KMEANS_K, n_iter=300))):
            t0 = time.perf_counter()
            scorer.fit(x)
            build = time.perf_counter() - t0
            s, t = per_video(scorer.score)
            record(name, 0.0, build, s, t)

    table = ["| method | micro-AUC | macro-AUC | train s | build s | score s |", "|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['method']} | {r['micro_auc']:.4f} | {r['macro_auc']:.4f} | {r['train_s']:.2f} | "
                     f"{r['build_s']:.3f} | {r['score_s']:.3f} |")
    plot_path = os.path.join(out_dir, "ped2_scores.png")
    try:
        keep = [n for n in ("LLSH", f"KNN k={DEMO_KNN_K}", "LSH") if n in curves]
        plot_curves(plot_path, {n: curves[n] for n in keep}, labels, test_names[:6],
                    title="Ped2 test videos: anomaly score (smoothed, min-max normalised)")
    except ImportError:
        plot_path = None
    summary = {"rows": rows, "training": training, "seed": int(seed), "plot": plot_path, "n_train": int(len(x)),
               "extractor": demo.meta.get("extractor"), "dim": int(x.shape[1])}
    _write_text(os.path.join(out_dir, "ped2_demo.json"), json.dumps(summary, indent=1))
    summary["table"] = "\n".join(table)
    return summary


def cmd_demo(args) -> int:
    t0 = time.time()
    if args.iterations is not None and args.iterations < 1:  # before the LSH row, not after it
        raise ConfigError(f"--iterations: expected a positive number of iterations per video, got {args.iterations}")
    training = {"iterations": args.iterations} if args.iterations is not None else None
    summary = run_demo(args.out, args.features, training, quiet=args.quiet, seed=args.seed)
    print()
    print(summary["table"])
    print(f"\nscore curves: {summary['plot']}   table: {os.path.join(args.out, 'ped2_demo.json')}   "
          f"total {time.time() - t0:.1f}s")
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llsh-index", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the whole path on the bundled Ped2 features (no data needed)")
    p.add_argument("--out", default="llsh_demo", help="folder for the plot, table and index (default llsh_demo)")
    p.add_argument("--features", default=None, help="another feature file in the demo layout")
    p.add_argument("--iterations", type=int, default=None, help="override the demo's training length")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the LSH / LLSH layers and of training (default 0; the AUCs vary with it, "
                        "see benchmarks/RESULTS.md)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("extract", help="videos (frame folders) -> cached snippet features (.npz)")
    p.add_argument("--dataset", choices=["ped2", "avenue", "shanghaitech", "folders"], required=True)
    p.add_argument("--root", required=True, help="dataset root (for 'folders': a folder of frame folders)")
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--out", required=True, help="feature file to write (reused if it matches)")
    p.add_argument("--T", type=int, default=16, help="frames per snippet")
    p.add_argument("--s", type=int, default=1, help="frame step inside a snippet")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_extract)

    p = sub.add_parser("fit", help="train the hash layers (MoCo) on training features")
    p.add_argument("--features", required=True)
    p.add_argument("--prefix", default=None, help="only videos whose name starts with this (e.g. train/)")
    p.add_argument("--out", required=True, help="file for the trained layers (an empty index)")
    _add_index_args(p)
    _add_training_args(p, dict(iterations=60, lr=1e-3, momentum=0.999, queue_size=8192, batch_size=256,
                               max_offset=150, temperature=0.2))
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_fit)

    p = sub.add_parser("build", help="index training features (with trained layers, or plain LSH)")
    p.add_argument("--features", required=True)
    p.add_argument("--prefix", default=None)
    p.add_argument("--model", default=None, help="layers from `fit`; without it, untrained LSH layers")
    p.add_argument("--out", required=True)
    _add_index_args(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_build)

    p = sub.add_parser("score", help="per-video, per-frame anomaly scores (.npz, optional .csv)")
    p.add_argument("--index", required=True)
    p.add_argument("--features", required=True)
    p.add_argument("--prefix", default=None)
    p.add_argument("--mode", dest="mode_override", choices=["mean", "light", "squared"], default=None)
    p.add_argument("--probes", type=int, default=1,
                   help="buckets probed per table (default 1, the paper; more also probe the keys with one or two "
                        "of the query's least confident bits flipped)")
    p.add_argument("--miss-probes", type=int, default=0,
                   help="probes per table for a snippet that misses every table (default 0, off: the paper scores "
                        "it with the miss value; otherwise it must exceed --probes)")
    p.add_argument("--reduce", choices=["min", "mean"], default="min",
                   help="over the tables: min (default, the paper) or mean over the tables whose bucket exists (ours)")
    p.add_argument("--out", required=True)
    p.add_argument("--csv", default=None)
    p.set_defaults(fn=cmd_score)

    p = sub.add_parser("evaluate", help="frame-level micro/macro AUC with the VAD protocol")
    p.add_argument("--scores", required=True)
    p.add_argument("--labels", required=True, help="label .npz (video -> per-frame 0/1) or a feature file")
    p.add_argument("--sigma", type=float, default=12)
    p.add_argument("--json", default=None)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("plot", help="score curves with the labelled anomalous frames shaded (PNG)")
    p.add_argument("--scores", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--videos", default=None, help="comma-separated video names (default: the first 6)")
    p.add_argument("--sigma", type=float, default=12)
    p.set_defaults(fn=cmd_plot)
    return ap


def _check_outputs(args) -> None:
    """Output files that can never be written (a folder, a device) fail before the command's work."""
    from .io import check_write_path

    for name in ("out", "csv", "json"):
        path = getattr(args, name, None)
        if path is not None and not (args.command == "demo" and name == "out"):  # demo --out is a folder
            check_write_path(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import LLSHError

    try:
        _check_outputs(args)
        return args.fn(args)
    except (LLSHError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
