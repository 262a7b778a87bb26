"""The `llsh-index` command line: videos -> features -> hash layers -> index -> scores -> AUC and plots.

    llsh-index demo                                   # the whole path on the bundled Ped2 features
    llsh-index extract --dataset ped2 --root ../shared/data/ped2 --split train --out train.npz
    llsh-index import --folder i3d_test --labels ST_gt.npz --snippet-frames 16 --out test.npz  # own features
    llsh-index fit --features train.npz --out layers.llsh
    llsh-index build --model layers.llsh --features train.npz --out index.llsh
    llsh-index merge --index cam1.llsh cam2.llsh --out both.llsh   # indexes built on the same layers
    llsh-index score --index index.llsh --features test.npz --out scores.npz [--csv scores.csv]
    llsh-index evaluate --scores scores.npz --labels test.npz
    llsh-index plot --scores scores.npz --labels test.npz --out curves.png
    llsh-index info --index index.llsh --features test.npz --plot tables.png   # buckets, active bits, hits
    llsh-index stream --index index.llsh --video clip.mp4 > live.csv   # frame by frame, as a live feed

Feature files are the pickle-free .npz of llsh_index.video.save_features (per-video arrays, labels
and the frame each snippet is aligned to).  Score files are .npz with one per-frame float32 array
per video and a `__meta__` entry (the scoring settings as JSON, with the file's format and
format_version); llsh_index.cli.load_scores reads the scores alone (np.load reads everything, no pickle).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .errors import NPZ_READ_ERRORS, ConfigError, IndexFormatError, InvalidInputError, UndertrainedWarning
from .training import DEMO_TRAINING, FALLBACK_DEFAULTS  # the demo's schedule, beside the paper's defaults (imported here as before)

DEMO_KNN_K = 1
DEMO_PROBES = 32  # the multi-probe rows (ours): buckets probed per table (on a miss: of every table)
DEMO_KMEANS_K = 32
PAPER_TRAINING = dict(iterations=60, epochs=1, lr=1e-3, momentum=0.999, queue_size=8192, batch_size=256,
                      max_offset=150, temperature=0.2, project_pcs=0, project_mean=False, centre_layers=False)
SCHEDULES = {"paper": PAPER_TRAINING, "demo": dict(PAPER_TRAINING, **DEMO_TRAINING)}


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


def positive_float(text: str) -> float:
    """argparse type for a finite number > 0 (scales, sizes in seconds)."""
    return _float_above(text, 0.0, strict=True)


def nonnegative_float(text: str) -> float:
    """argparse type for a finite number >= 0 (0 often meaning "no limit")."""
    return _float_above(text, 0.0, strict=False)


def _float_above(text: str, low: float, strict: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (np.isfinite(value) and (value > low if strict else value >= low)):
        raise argparse.ArgumentTypeError(f"expected a finite number {'>' if strict else '>='} {low:g}, got {text}")
    return value


def output_file(text: str) -> str:
    """argparse type for a file the command will write: a folder or a device there fails at parsing."""
    from .io import check_write_path

    try:
        check_write_path(text)
    except OSError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def output_folder(text: str) -> str:
    """argparse type for a folder the command will fill: an existing file there fails at parsing."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected a folder (or a path to create one), got the file {text!r}")
    return text


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def _crops(text: str):
    """argparse type of import --crops: 'mean' or a crop index >= 0."""
    return "mean" if text == "mean" else _int_at_least(text, 0)


def _load_feature_file(path: str):
    from .video import FeatureFileError, load_feature_file

    if os.path.isdir(path):  # the loader's "not found" would send one looking for a missing file
        raise FeatureFileError(f"{path}: expected a feature file (.npz from `llsh-index extract` or `import`), got a "
                               "folder")
    return load_feature_file(path)  # a NUL byte, a link loop: refused there (io.refuse_non_regular)


def _select(ff, prefix: Optional[str]) -> List[str]:
    names = [v for v in ff.videos if prefix is None or v.startswith(prefix)]
    if not names:
        raise InvalidInputError(f"no video in {ff.meta.get('videos', [])[:3]}... matches prefix {prefix!r}")
    return names


def _select_scored(ff, prefix: Optional[str], path: str) -> List[str]:
    """_select() for the commands that look every video's snippets up: a video without snippets
    (a clip shorter than one, extracted unclamped) has nothing to score, named as such."""
    names = _select(ff, prefix)
    empty = [v for v in names if len(ff.features[v]) == 0]
    if empty:
        raise InvalidInputError(f"{path}: expected at least one snippet per video, got none for videos {empty[:5]} "
                                f"(shorter than one snippet; extract with clamping, the default, keeps them)")
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
    if s.size == 0:
        raise InvalidInputError(f"snippet scores: expected at least one snippet for a video of {n_frames} frames, "
                                "got none (the video is shorter than one snippet; video.extract_dataset's "
                                "clamp=True, the default, keeps it)")
    if len(frame_index) != s.size:
        raise InvalidInputError(f"snippet scores: expected one per entry of the frame index ({len(frame_index)}), "
                                f"got {s.size}")
    return np.interp(np.arange(n_frames), np.asarray(frame_index, np.float64), s).astype(np.float32)


# The score file's own entry, and its format: "format_version" in the `__meta__` JSON since
# 2026-12-01 (files without it, written before, have the same layout and read as version 1).
SCORES_META = "__meta__"
SCORE_FILE_FORMAT = "llsh_index.scores"
SCORE_FILE_VERSION = 1


def _check_score_names(names: Sequence[str], path: str, from_feature_file: bool = True) -> None:
    """Video names a score file cannot hold, refused before the scoring: `__meta__` (the settings'
    entry), and names a zip member name would change or cannot encode (a NUL byte, which zipfile
    cuts the name at; a lone surrogate from an undecodable file name).  from_feature_file: the names
    come from a feature file (`llsh-index score`), so the fix is made there; from save_scores, the
    caller's own mapping, they are renamed in it."""
    for name in names:
        if name == SCORES_META:
            why = f"{SCORES_META!r} is the name of the score file's settings entry"
        elif not _zip_keeps(name + ".npy"):
            why = "a score file entry (a zip member name) cannot hold it unchanged"
        else:
            continue
        fix = "rename that video in the feature file (save_features)" if from_feature_file else "rename that video"
        raise InvalidInputError(f"{path}: expected video names a score file can hold, got {name!r}: {why}; {fix}")


def _zip_keeps(member: str) -> bool:
    import zipfile

    try:
        member.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return zipfile.ZipInfo(member).filename == member


def _save_scores(path: str, scores: Dict[str, np.ndarray], meta: dict) -> None:
    """np.savez's layout (one NAME.npy per video, SCORES_META.npy), written member by member: through
    np.savez(f, **scores) a video named `file` clashed with its first argument and one named
    `allow_pickle` was taken as that option and left out."""
    import zipfile

    from .io import atomic_write

    # cmd_score has checked its names (with the feature-file advice) before the scoring: only
    # save_scores' own mapping can fail here
    _check_score_names(list(scores), path, from_feature_file=False)
    # the format fields last, so no settings entry can stand in for them (a file load_scores refuses)
    meta = {**meta, "format": SCORE_FILE_FORMAT, "format_version": SCORE_FILE_VERSION}
    entries = {SCORES_META: np.array(json.dumps(meta)), **scores}
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in entries.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:  # force_zip64: as np.savez (numpy gh-10776)
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)


STDOUT = "-"  # --json - / --csv -: the file goes to standard output, and what the command prints to stderr
_STDOUT_OPTIONS = ("json", "csv")
_real_stdout = None  # the process's stdout while main() sends the command's own prints to stderr


def _write_text(path: str, text: str) -> None:
    """A CSV / JSON output, written like every other file of the package (atomically, checked path),
    or to standard output for "-"."""
    from .io import atomic_write

    if path == STDOUT:
        out = _real_stdout or sys.stdout
        out.write(text if text.endswith("\n") else text + "\n")
        out.flush()
        return
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def _open_npz(path: str, what: str):
    """np.load of an .npz the command reads, with a missing, damaged or foreign file named as such."""
    from .io import refuse_non_regular

    refuse_non_regular(path, IndexFormatError, f"a {what} file (.npz)")  # a NUL byte, a link loop, a FIFO
    if os.path.isdir(path):
        raise IndexFormatError(f"{path}: expected a {what} file (.npz), got a folder")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except NPZ_READ_ERRORS as exc:
        from .io import npz_refusal

        raise IndexFormatError(f"{path}: not a readable {what} file (.npz): {npz_refusal(path, exc)}") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise IndexFormatError(f"{path}: expected an .npz {what} file, got a single .npy array")
    return z


def _is_feature_file(z) -> bool:
    """An open .npz written by video.save_features (its meta and first video's features)."""
    return "meta" in z.files and "features_00000" in z.files


def save_scores(path: str, scores: Mapping[str, Any], meta: Optional[dict] = None) -> None:
    """Writes {video: per-frame scores} as a score file (what `llsh-index score` writes and `evaluate`,
    `plot` and load_scores read), atomically; `meta`: JSON settings kept with them (e.g. how the
    scores were made), returned by load_score_meta with the file's "format" and "format_version".
    Scores of your own method can so be evaluated and plotted beside LLSH's with the command line.

    InvalidInputError for names a score file cannot hold (`__meta__`), scores that are not 1-D
    finite numbers within float32's range, or none; ConfigError for meta that is not a JSON object or
    that holds the file's own keys "format" / "format_version"."""
    if not isinstance(scores, Mapping) or not scores:
        raise InvalidInputError(f"save_scores: expected a non-empty mapping of video name -> per-frame scores, got "
                                f"{type(scores).__name__}{' (empty)' if isinstance(scores, Mapping) else ''}")
    out = {}
    for name, value in scores.items():
        if not isinstance(name, str):
            raise InvalidInputError(f"save_scores: expected video names as str, got {type(name).__name__} {name!r}")
        arr = np.asarray(value)
        if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "biuf" or arr.dtype.kind == "b":
            raise InvalidInputError(f"save_scores: video {name!r}: expected a non-empty 1-D array of numbers (one "
                                    f"score per frame), got {arr.dtype} of shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise InvalidInputError(f"save_scores: video {name!r}: expected finite scores, got NaN or Inf")
        with np.errstate(over="ignore"):  # beyond float32's range, refused below
            stored = arr.astype(np.float32)
        if not np.isfinite(stored).all():  # a finite float64 above float32's largest was stored as inf
            frame = int(np.flatnonzero(~np.isfinite(stored))[0])
            raise InvalidInputError(f"save_scores: video {name!r}: expected scores within float32's range (|score| "
                                    f"<= {float(np.finfo(np.float32).max):.4g}: score files store float32), got "
                                    f"{arr[frame]} at frame {frame}")
        out[name] = stored
    meta = {} if meta is None else meta
    try:
        if not isinstance(meta, dict):
            raise TypeError(type(meta).__name__)
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"save_scores: meta: expected a JSON object (dict of JSON values), got {exc}") from None
    reserved = sorted(k for k in ("format", "format_version") if k in meta)
    if reserved:  # the file's own format fields: another value would write a file load_scores refuses
        raise ConfigError(f"save_scores: meta: expected settings without the keys 'format' and 'format_version' "
                          f"(the score file's own, written by save_scores), got {reserved}")
    _save_scores(path, out, meta)


def load_scores(path: str) -> Dict[str, np.ndarray]:
    """The per-frame scores of a score file from `llsh-index score`: {video: float32 array}, ready for
    llsh_index.metrics.evaluate (its `__meta__` entry, the scoring settings as JSON, left out).

    Raises FileNotFoundError for a missing file, IndexFormatError for one that is not a readable
    .npz or of a future format version, InvalidInputError for a feature file or a file without scores."""
    with _open_npz(path, "score") as z:
        if _is_feature_file(z):
            raise InvalidInputError(f"{path}: a feature file, not a score file; run `llsh-index score` on it first")
        try:
            if SCORES_META in z.files:
                _check_score_meta(z[SCORES_META], path)
            # by zip member, not z.files: videos named `x` and `x.npy` both strip to a key `x.npy`
            scores = {member[:-4] if member.endswith(".npy") else member: z[member]
                      for member in z.zip.namelist() if member != SCORES_META + ".npy"}
        except IndexFormatError:
            raise
        except NPZ_READ_ERRORS as exc:
            raise IndexFormatError(f"{path}: damaged score file: {exc}") from exc
    if not scores:
        raise InvalidInputError(f"{path}: holds no per-video scores")
    return scores


def load_score_meta(path: str) -> Optional[dict]:
    """The scoring settings a score file's `__meta__` entry records (index, features, mode, probes...,
    format and format_version), or None for a file without one (e.g. written by np.savez); checked
    as load_scores checks it."""
    with _open_npz(path, "score") as z:
        if SCORES_META not in z.files:
            return None
        try:
            entry = z[SCORES_META]
        except NPZ_READ_ERRORS as exc:
            raise IndexFormatError(f"{path}: damaged score file: {exc}") from exc
    return _check_score_meta(entry, path)


def _check_score_meta(entry, path: str) -> dict:
    """A score file's `__meta__` JSON, returned: IndexFormatError for another format or a newer version."""
    try:
        meta = json.loads(str(entry[()]))
    except (ValueError, IndexError, TypeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise IndexFormatError(f"{path}: damaged score file (its {SCORES_META} entry is not JSON: {exc})") from exc
    if not isinstance(meta, dict):
        raise IndexFormatError(f"{path}: damaged score file (expected a JSON object in {SCORES_META}, got "
                               f"{type(meta).__name__})")
    if meta.get("format", SCORE_FILE_FORMAT) != SCORE_FILE_FORMAT:
        raise IndexFormatError(f"{path}: expected format {SCORE_FILE_FORMAT!r}, got {meta['format']!r}")
    version = meta.get("format_version", 1)  # files written before the version was recorded: version 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise IndexFormatError(f"{path}: expected an integer format_version >= 1, got {version!r}")
    if version > SCORE_FILE_VERSION:
        raise IndexFormatError(f"{path}: score file format version {version} was written by a newer llsh_index; "
                               f"this one reads versions up to {SCORE_FILE_VERSION}")
    return meta


def _load_labels(path: str, scores: Optional[Dict[str, np.ndarray]] = None,
                 allow_subset: bool = True) -> Dict[str, np.ndarray]:
    """Per-frame labels from a label .npz (vad_groundtruth layout), a feature file with labels, or
    UCSD's ped2.mat (its ranges need each video's frame count: UCSD Ped2's own for videos named by
    number, else the per-frame scores' lengths).  A .mat's labels are those of the scored videos,
    matched by the number their names end in (metrics.load_ped2_labels); allow_subset=False refuses
    scores of fewer videos than the file holds, as evaluate refuses them against a label .npz."""
    from . import metrics
    from .io import refuse_non_regular

    if path.lower().endswith(".mat"):
        # a NUL byte or a link loop: os.path.exists says False for both, which read "label file not found"
        refuse_non_regular(path, metrics.LabelFileError, "a MATLAB label file")
        if not os.path.exists(path):
            raise FileNotFoundError(f"label file not found: {path}")
        if not scores:
            raise InvalidInputError(f"{path}: a .mat label file needs per-frame scores to count the frames")
        numbers = metrics._video_numbers(list(scores), len(metrics.UCSD_PED2_TEST_FRAMES))
        if numbers is not None:
            # videos named by number: UCSD Ped2's own frame counts, so scores of another length are
            # refused (or placed, with --align centre) instead of labelled as that many frames
            try:
                metrics.load_ped2_labels(path)
            except metrics.LengthMismatchError:  # not Ped2's 12 videos: the scores' lengths count the frames
                pass
            else:
                return metrics.load_ped2_labels(
                    path, {v: metrics.UCSD_PED2_TEST_FRAMES[n - 1] for v, n in numbers.items()},
                    allow_subset=allow_subset)
        try:
            return metrics.load_ped2_labels(path, {v: len(scores[v]) for v in sorted(scores)},
                                            allow_subset=allow_subset)
        except metrics.LengthMismatchError as exc:
            # the Python API's way out, frame counts as a sequence, is none on the command line
            hint = metrics._PED2_SEQUENCE_HINT
            if not str(exc).endswith(hint):
                raise
            raise metrics.LengthMismatchError(
                str(exc)[:-len(hint)] + " (rename the videos to end in their video number, in the feature file "
                "before `llsh-index score` or in save_scores' mapping, or give --labels a label .npz instead)"
            ) from None
    with _open_npz(path, "label") as z:
        is_feature_file = _is_feature_file(z)
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
        if "code_dtype" in given and given["mode"] != "mean":  # nothing would be stored in it
            raise ConfigError(f"--code-dtype {given['code_dtype']}: the dtype of stored codes, which --mode "
                              f"{given['mode']} does not keep (bucket statistics only); leave --code-dtype out, or use "
                              f"--mode mean")
    return given


def _index_from_args(args, dim: Optional[int] = None):
    from . import LearnableLSHIndex

    seed = 0 if args.seed is None else args.seed
    return LearnableLSHIndex(dim, seed=seed, **_given_index_options(args))  # the rest: its defaults


def _index_like_model(model, args):
    """An empty index on the model's layers; --mode / --code-dtype given on the command line apply,
    --n-tables / --n-bits must agree with the layers (they cannot be changed without refitting)."""
    given = _given_index_options(args)
    if args.seed is not None:  # the layers are the model's: nothing is drawn
        raise ConfigError(f"--seed {args.seed}: the hash layers come from --model (`fit --seed` seeded them), so "
                          f"there is nothing to seed; leave --seed out")
    if "code_dtype" in given and "mode" not in given and not model.store_codes:
        raise ConfigError(f"--code-dtype {given['code_dtype']}: the dtype of stored codes, which the model's mode "
                          f"{model.mode} does not keep (bucket statistics only); leave --code-dtype out, or add "
                          f"--mode mean")
    for name in ("n_tables", "n_bits"):
        value = given.pop(name, None)
        if value is not None and value != getattr(model, name):
            raise ConfigError(f"--{name.replace('_', '-')} {value} does not match the model's layers "
                              f"({name} = {getattr(model, name)}); leave it out or refit")
    return model.empty_like(**given)


def _add_index_args(p: argparse.ArgumentParser, seed_help: str) -> None:
    p.add_argument("--n-tables", type=int, default=None,
                   help="b, number of hash tables (default 8; build --model: the layers')")
    p.add_argument("--n-bits", type=int, default=None,
                   help="r, bits per key, 1..64 (default 32; build --model: the layers')")
    p.add_argument("--mode", choices=["mean", "light", "squared"], default=None,
                   help="score: mean L2 to the bucket (LLSH, default), distance to its mean (light), mean squared "
                        "L2; light and squared keep bucket statistics only")
    p.add_argument("--code-dtype", choices=["float32", "float16"], default=None,
                   help="stored codes (mean mode only): float16 halves the index in memory and on disk (default "
                        "float32)")
    p.add_argument("--seed", type=int, default=None, help=seed_help)


def _add_training_args(p: argparse.ArgumentParser) -> None:
    """Training options; each left out takes the value of --schedule."""
    demo = SCHEDULES["demo"]
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=None,
                   help="the settings every option below defaults to (default: paper): 'paper' (lr 1e-3, tau 0.2, "
                        "queue 8192, "
                        "60 iterations per video: sized for ShanghaiTech's 330 long videos) or 'demo' (lr "
                        f"{demo['lr']}, tau {demo['temperature']}, queue {demo['queue_size']}, {demo['iterations']} "
                        f"iterations per video, {demo['project_pcs']} principal directions projected out: the demo's, "
                        "for a few short videos such as Ped2's 16)")
    p.add_argument("--iterations", type=int, default=None,
                   help="pairs per video and epoch (one epoch = n_videos x iterations pairs)")
    p.add_argument("--epochs", type=int, default=None, help="passes (default 1)")
    p.add_argument("--lr", type=float, default=None, help="SGD learning rate")
    p.add_argument("--momentum", type=float, default=None, help="key-encoder EMA")
    p.add_argument("--queue-size", type=int, default=None, help="negatives kept (FIFO of recent keys)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"training pairs per SGD step (default {demo['batch_size']} in both schedules)")
    p.add_argument("--max-offset", type=int, default=None, help="positives within +-this many snippets")
    p.add_argument("--temperature", type=float, default=None, help="InfoNCE tau")
    p.add_argument("--project-pcs", type=int, default=None,
                   help="ours: the layers lose the data's top-K principal directions (demo 30; paper 0)")
    p.add_argument("--project-mean", action=argparse.BooleanOptionalAction, default=None,
                   help="ours: keep the gradient off the data's mean direction (on in the demo schedule)")
    p.add_argument("--centre-layers", action=argparse.BooleanOptionalAction, default=None,
                   help="ours: remove the data's mean direction from the layers too, so every bit splits the "
                        "training data (for large training sets; see benchmarks/RESULTS.md, Table 2)")


def _add_scoring_args(p: argparse.ArgumentParser) -> None:
    """`score` and `stream`: how the index scores (its mode, probes, the reduction over tables)."""
    p.add_argument("--mode", dest="mode_override", choices=["mean", "light", "squared"], default=None,
                   help="score with another mode than the index's (light / squared from a mean-mode index)")
    p.add_argument("--probes", type=int, default=1,
                   help="buckets probed per table (default 1, the paper; more also probe the keys with one or two "
                        "of the query's least confident bits flipped)")
    p.add_argument("--miss-probes", type=int, default=0,
                   help="probes per table for a snippet that misses every table (default 0, off: the paper scores "
                        "it with the miss value; otherwise it must exceed --probes)")
    p.add_argument("--reduce", choices=["min", "mean"], default="min",
                   help="over the tables: min (default, the paper) or mean over the tables whose bucket exists (ours)")


def _check_probe_args(args) -> None:
    """score / stream --probes, --miss-probes: probing.check_probes's rules, named as options."""
    from . import probing

    if args.probes < 1:  # the same rule, with a word on what 1 means
        raise ConfigError(f"--probes: expected an integer >= 1 (1: the paper's single lookup), got {args.probes}")
    probing.check_probes(args.probes, args.miss_probes, names=("--probes", "--miss-probes"))


def _load_index(path: str, option: str, device: str = "cpu"):
    """LearnableLSHIndex.load(path), a missing file named with the option that gave it.  A folder
    of shard files (ShardedIndex.save_shards, `python -m llsh_index.distributed --save-shards`) is
    read as the one index of all its shards' items (gather(): the scores of the shards scored together;
    exactly with codes, to float64 summation order for statistics-only shards)."""
    from . import LearnableLSHIndex
    from .errors import IndexFileNotFoundError

    try:
        if os.path.isdir(path):
            from .sharded import ShardedIndex

            index = ShardedIndex.load(path, devices=["cpu"]).gather()
            return index if device == "cpu" else index.to(device)
        return LearnableLSHIndex.load(path, device=device)
    except IndexFileNotFoundError as exc:
        raise IndexFileNotFoundError(f"{option}: {exc}", exc.filename) from None


def _load_built_index(path: str, device: str = "cpu"):
    """An index file from `build` (not the empty layers `fit` writes)."""
    index = _load_index(path, "--index", device)
    if index.ntotal == 0:
        raise ConfigError(f"{path} holds hash layers but no indexed snippets (a `fit` output); index the "
                          f"training features first: llsh-index build --model {path} --features ... --out ...")
    return index


def _check_feature_space(index, meta: dict, index_path: str, args, name: Optional[str] = None,
                         option: Optional[str] = None, index_name: Optional[str] = None,
                         dim: Optional[int] = None) -> None:
    """Features made otherwise than those the index records (its feature_space_: extractor, T, s...)
    are refused, naming both, unless --allow-other-features.  name / option: where the features come
    from (default: the --features file); index_name: the index in the list of differences (default
    index_path); dim: the features' dimension, named with the differences when not the index's."""
    from .video import feature_space_mismatch

    name = name or args.features
    why = feature_space_mismatch(index.feature_space_, meta, (index_name or index_path, name))
    if why and dim is not None and dim != index.dim:
        why = f"dim {index.dim} for {index_name or index_path}, {dim} for {name}; {why}"
    if why and not args.allow_other_features:
        raise InvalidInputError(f"{option or '--features ' + name}: expected features made like those {index_path} "
                                f"was fitted or built on, got features made otherwise ({why}); make them with the "
                                f"same settings, or pass --allow-other-features to use them anyway")


def _record_feature_space(index, meta: dict) -> None:
    from .video import feature_space

    index.feature_space_ = feature_space(meta) or None


def _training_kwargs(args) -> dict:
    """The schedule's settings, with each option given on the command line in place of its own;
    fit --static: only the options given (the rest: fit()'s static-data fallback, FALLBACK_DEFAULTS)."""
    if getattr(args, "static", False):
        for flag, value in (("--schedule", args.schedule), ("--max-offset", args.max_offset)):
            if value is not None:
                raise ConfigError(f"fit --static: {flag} is for video training (static rows take the static-data "
                                  f"fallback's settings, each option below --schedule overriding its own), got "
                                  f"{flag} {value}")
        return {k: getattr(args, k) for k in PAPER_TRAINING if getattr(args, k, None) is not None}
    out = dict(SCHEDULES[args.schedule or "paper"])
    out.update({k: getattr(args, k) for k in out if getattr(args, k, None) is not None})
    return out


# ---------------------------------------------------------------------- subcommands
def cmd_extract(args) -> int:
    from . import datasets, video

    loaders = {"ped2": datasets.load_ped2, "avenue": datasets.load_avenue,
               "shanghaitech": datasets.load_shanghaitech, "corridor": datasets.load_corridor,
               "folders": datasets.load_frame_folders}
    if args.split is not None and args.dataset == "folders":
        raise ConfigError(f"extract: --split selects a benchmark's training or test videos; --dataset folders takes "
                          f"every folder under --root, got --split {args.split}")
    split = {"train": "training", "test": "testing"}[args.split or "train"]
    if args.skip_first_frame != "auto" and args.dataset != "corridor":
        raise ConfigError(f"extract: --skip-first-frame is for --dataset corridor (its black first frames), "
                          f"got --dataset {args.dataset}")
    kw = {} if args.dataset != "corridor" else {"skip_first_frame": {"auto": None, "yes": True, "no": False}[
        args.skip_first_frame]}
    if args.dataset == "folders":
        labels = datasets.load_npz_labels(args.labels) if args.labels else None
        ds = datasets.load_frame_folders(args.root, labels)
    elif args.labels is None:
        ds = loaders[args.dataset](args.root, split, **kw)
    else:  # the label file lies elsewhere (e.g. ../shared/data/vad_groundtruth)
        key = "mat_path" if args.dataset == "ped2" else "labels_path"
        ds = loaders[args.dataset](args.root, split, **{key: args.labels}, **kw)
    if args.videos:
        wanted = [v.strip() for v in args.videos.split(",") if v.strip()]
        unknown = [v for v in wanted if v not in ds.names]
        if unknown or not wanted:
            raise InvalidInputError(f"--videos: expected names from {args.dataset} {split} "
                                    f"({', '.join(ds.names[:8])}{', ...' if len(ds) > 8 else ''}), got {unknown or wanted}")
        ds.videos = [v for v in ds.videos if v.name in wanted]
    extractor = video.EfficientNetLite0Extractor(device=args.device or "cpu")
    # the file at --out is reused when it holds these features, and never replaced unasked: extraction takes minutes
    why = video.cache_mismatch(args.out, ds, extractor, T=args.T, s=args.s) if os.path.isfile(args.out) else ""
    if why and not args.overwrite:
        raise ConfigError(f"--out {args.out}: {why}; pass --overwrite to replace it, or choose another --out")
    if why:
        print(f"note: replacing {args.out} ({why})", file=sys.stderr)
    t0 = time.time()
    feats, meta = video.extract_dataset(ds, extractor, T=args.T, s=args.s, cache=args.out,
                                        progress=not args.quiet)
    n = sum(len(v) for v in feats.values())
    how = "reused (it holds these features)" if why is None else f"({time.time() - t0:.1f}s)"
    print(f"{len(feats)} videos, {n} snippets, dim {meta.get('dim')} -> {args.out} {how}")
    return 0


def cmd_import(args) -> int:
    from .feature_arrays import import_feature_arrays

    t0 = time.time()
    ff = import_feature_arrays(args.folder, args.out, labels=args.labels, snippet_frames=args.snippet_frames,
                               crops=args.crops, suffix=args.suffix, dtype=args.dtype, progress=not args.quiet)
    n = sum(len(v) for v in ff.features.values())
    print(f"{len(ff.features)} videos, {n} snippets, dim {ff.meta.get('dim')} -> {args.out} ({time.time() - t0:.1f}s)")
    unlabelled, left_out = ff.meta.get("videos_without_labels"), ff.meta.get("labels_left_out", 0)
    if unlabelled:
        print(f"note: {len(unlabelled)} videos have no labels in {args.labels} ({', '.join(unlabelled[:5])}"
              f"{', ...' if len(unlabelled) > 5 else ''})", file=sys.stderr)  # notes on stderr, as every command's
    if left_out:
        print(f"note: {left_out} videos of {args.labels} have no features in {args.folder} (left out)", file=sys.stderr)
    return 0


def cmd_fit(args) -> int:
    from .training import barely_trains
    from .video import labelled_anomalous

    ff = _load_feature_file(args.features)
    names = _select(ff, args.prefix)
    anomalous = labelled_anomalous(ff.labels, names)
    if anomalous:  # a test split given for training: its anomalies would be learned as normal
        print(f"warning: {args.features}: the training features contain frames labelled anomalous "
              f"({anomalous}); the layers learn them as normal; train on the normal (training split) videos",
              file=sys.stderr)
    x, vids = _stack(ff, names)
    index = _index_from_args(args, x.shape[1])
    training = _training_kwargs(args)
    with warnings.catch_warnings():  # the library's UndertrainedWarning becomes the one-line note below
        warnings.simplefilter("ignore", UndertrainedWarning)
        index.fit(x, video_ids=None if args.static else vids, progress=not args.quiet, **training)
    _record_feature_space(index, ff.meta)
    size = index.save(args.out)
    log = index.training_log_
    last = min(10, log.steps)  # the bar shows each step's loss: the first one, then the last few averaged
    loss = (f"loss {log.losses[0]:.4f}" if log.steps == 1 else f"loss {log.losses[0]:.4f} at the first step -> "
            f"{np.mean(log.losses[-last:]):.4f} mean of the last {last} steps")
    how = "static: rows as independent samples" if args.static else f"{args.schedule or 'paper'} schedule"
    print(f"trained on {len(x)} snippets of {len(names)} videos ({how}): {log.steps} steps, "
          f"{loss}; saved {args.out} ({size} bytes)")
    if not args.static and barely_trains(log.steps, training["lr"], log.projected_pcs, index.training_config_.centre_layers):
        print(f"note: {log.steps} SGD steps at lr {training['lr']:g} barely move the layers from plain LSH; "
              "for a few short videos (such as Ped2) try --schedule demo, or raise --iterations", file=sys.stderr)
    return 0


def cmd_build(args) -> int:
    if args.allow_other_features and not args.model:
        raise ConfigError("build: --allow-other-features lets --features differ from the feature space --model "
                          "recorded, and no --model was given (new layers take the features' own)")
    ff = _load_feature_file(args.features)
    x, _ = _stack(ff, _select(ff, args.prefix))
    if args.model:
        index = _index_like_model(_load_index(args.model, "--model"), args)
        _check_feature_space(index, ff.meta, args.model, args)
    else:
        index = _index_from_args(args, x.shape[1])
    _record_feature_space(index, ff.meta)
    t0 = time.time()
    index.add(x, progress=not args.quiet)
    size = index.save(args.out)
    print(f"indexed {index.ntotal} snippets in {time.time() - t0:.2f}s; buckets per table "
          f"{index.stats()['n_buckets']}; saved {args.out} ({size} bytes)")
    return 0


def cmd_merge(args) -> int:
    """Index files built on the same layers (`build --model` on several feature files, e.g. one per
    camera or per machine) -> one index holding all their items, in the order given."""
    from .errors import LLSHError

    if len(args.index) < 2 and not os.path.isdir(args.index[0]):  # a folder of shards alone: one file of them
        raise ConfigError(f"merge: expected two or more --index files (or a folder of shard files), got "
                          f"{len(args.index)} ({args.index[0]}); a copy of one index is the file itself")
    indexes = [_load_index(path, "--index") for path in args.index]
    merged = indexes[0].empty_like()
    for path, index in zip(args.index, indexes):
        try:
            merged._check_same_layers(index)  # what merge() checks, first, for every file
        except LLSHError as exc:  # named with the file: "this index / the other" means little here
            raise type(exc)(f"--index {path} against {args.index[0]}: {exc}") from None
    merged._merge_many(indexes)
    if merged.ntotal == 0:  # fit outputs only: layers, no items
        raise ConfigError("merge: the --index files hold hash layers but no indexed snippets (`fit` outputs); "
                          "merge the indexes `build --model` makes from them")
    size = merged.save(args.out)
    print(f"merged {len(indexes)} indexes: {merged.ntotal} snippets "
          f"({' + '.join(str(i.ntotal) for i in indexes)}); buckets per table {merged.stats()['n_buckets']}; "
          f"saved {args.out} ({size} bytes)")
    return 0


def cmd_score(args) -> int:
    _check_probe_args(args)
    index = _load_built_index(args.index)
    ff = _load_feature_file(args.features)
    _check_feature_space(index, ff.meta, args.index, args)
    names = _select_scored(ff, args.prefix, args.features)
    _check_score_names(names, args.features)  # before the work, not at the write
    out, t0, all_missed = {}, time.time(), True
    miss = np.float32(index.default_miss_value(args.mode_override))
    for v in names:
        s = index.score(ff.features[v], mode=args.mode_override, n_probes=args.probes, miss_probes=args.miss_probes,
                        reduce=args.reduce)
        all_missed = all_missed and bool((np.asarray(s) == miss).all())
        out[v] = frame_scores(s, ff.frame_index.get(v), ff.n_frames.get(v))
    _save_scores(args.out, out, {"index": os.path.abspath(args.index), "features": os.path.abspath(args.features),
                                 "mode": args.mode_override or index.mode, "n_probes": args.probes,
                                 "miss_probes": args.miss_probes, "reduce": args.reduce})
    print(f"scored {len(names)} videos in {time.time() - t0:.2f}s -> {args.out}")
    if all_missed and index.misses_score_above_hits(args.mode_override):  # as LLSHDetector warns: no ranking
        print(f"warning: every snippet missed every hash table, so every score is the miss value {float(miss):g} and "
              "they carry no ranking; check that the features were made like the training features, or score with "
              "--miss-probes 32, or build with fewer --n-bits", file=sys.stderr)
    if args.csv:
        import csv
        import io

        text = io.StringIO(newline="")
        writer = csv.writer(text, lineterminator="\n")  # quotes names with commas, quotes or newlines
        writer.writerow(["video", "frame", "score"])
        writer.writerows((v, i, f"{val:.6g}") for v, s in out.items() for i, val in enumerate(s))
        _write_text(args.csv, text.getvalue())
        print(f"-> {args.csv}")
    return 0


def _check_alert_args(args) -> None:
    """stream's --threshold / --calibrate / --contamination / --held-out: one way to the threshold."""
    if args.threshold is not None and args.calibrate is not None:
        raise ConfigError(f"stream: expected either --threshold or --calibrate (a threshold given, or computed "
                          f"from normal video), got both (--threshold {args.threshold:g}, --calibrate "
                          f"{args.calibrate})")
    if args.calibrate is None:
        for flag, value in (("--contamination", args.contamination), ("--held-out", args.held_out or None)):
            if value is not None:
                raise ConfigError(f"stream: {flag} sets how --calibrate computes the threshold, got {flag} without "
                                  f"--calibrate")
    elif args.contamination is not None:  # before the features load (and warn): calibrate() checks it alike
        from .sklearn import check_contamination

        try:
            check_contamination(args.contamination)
        except ConfigError as exc:
            raise ConfigError(f"--{exc}") from None


def _stream_differs(index, ours: dict) -> str:
    """The stream's settings that differ from the features the index records, for the start of the
    error: e.g. "stream --T 8", "stream extractor efficientnet_lite0 (1280-d), --T 16, --s 1"."""
    from .video import feature_space

    recorded, here = feature_space(index.feature_space_ or {}), feature_space(ours)
    extractor_keys = ("extractor", "extractor_version", "extractor_config", "source", "crops")
    parts = []
    if any(recorded.get(k) != here.get(k) for k in extractor_keys) or ours["dim"] != index.dim:
        parts.append(f"extractor {ours['extractor']} ({ours['dim']}-d)")
    parts += [f"--{k} {ours[k]}" for k in ("T", "s") if recorded.get(k) != ours[k]]
    return " ".join(["stream", ", ".join(parts)]) if parts else "stream"


def cmd_stream(args) -> int:
    from . import video
    from .stream import ANOMALOUS_CALIBRATION, StreamScorer, alert_intervals

    _check_alert_args(args)
    _check_probe_args(args)
    index = _load_built_index(args.index, args.device or "cpu")
    extractor = video.EfficientNetLite0Extractor(device=args.device or "cpu")
    ours = dict(extractor.describe(), T=args.T, s=args.s, clamp=True)
    _check_feature_space(index, ours, args.index, args, "the stream", _stream_differs(index, ours), "the index",
                         extractor.dim)
    ff = None if args.calibrate is None else _load_feature_file(args.calibrate)
    if ff is not None:
        _check_feature_space(index, ff.meta, args.index, args, args.calibrate, f"--calibrate {args.calibrate}")
    scorer = StreamScorer(index, extractor, T=args.T, s=args.s, sigma=args.sigma,
                          smoothing="causal" if args.causal else "centred", mode=args.mode_override,
                          n_probes=args.probes, miss_probes=args.miss_probes, reduce=args.reduce,
                          threshold=args.threshold)
    if args.calibrate is not None:
        q = 0.01 if args.contamination is None else args.contamination
        anomalous = video.labelled_anomalous(ff.labels, ff.videos)
        if anomalous:  # a test split given as normal video: its anomalies would raise the threshold
            print(f"warning: --calibrate {args.calibrate}: the calibration features contain frames labelled "
                  f"anomalous ({anomalous}); the threshold counts them as normal; calibrate on normal (training "
                  f"split) videos", file=sys.stderr)
        with warnings.catch_warnings():  # calibrate()'s own warning of it: the line above
            warnings.filterwarnings("ignore", ANOMALOUS_CALIBRATION, UserWarning)
            threshold = scorer.calibrate(ff, q, held_out=args.held_out)
        n = sum(len(ff.features[v]) for v in ff.videos)
        how = ("held out of the index" if args.held_out else "leave-videos-out" if
               getattr(index, "training_config_", None) is None else "cross-fitted: layers retrained without each fold")
        print(f"threshold {threshold:.6g}: the {1 - q:.4g} quantile of the smoothed scores of {n} frames of "
              f"{len(ff.videos)} normal videos in {args.calibrate} ({how})", file=sys.stderr)
    alerting = scorer.threshold is not None
    out = sys.stdout
    t0, started, intervals, n_alerts = time.time(), [], [], [0]

    def write(res) -> None:
        if not started:  # the header once a frame was read: a source that fails writes nothing
            out.write("frame,score,raw,alert\n" if alerting else "frame,score,raw\n")
            started.append(True)
        if alerting:
            flags = res.alerts
            out.writelines(f"{f},{v:.6g},{r:.6g},{int(a)}\n"
                           for f, v, r, a in zip(res.frames.tolist(), res.scores, res.raw, flags))
            runs = alert_intervals(res.frames, flags)
            n_alerts[0] += int(flags.sum())
            if runs and intervals and runs[0][0] == intervals[-1][1] + 1:  # a run going on across calls
                intervals[-1] = (intervals[-1][0], runs.pop(0)[1])
            intervals.extend(runs)
        else:
            out.writelines(f"{f},{v:.6g},{r:.6g}\n" for f, v, r in zip(res.frames.tolist(), res.scores, res.raw))
        out.flush()  # a line as soon as its score is final: the command feeds a pipe

    stopped = False
    with scorer:  # stops the CNN worker threads
        try:
            for frame in video.iter_frames(args.video):
                write(scorer.push(frame))
        except KeyboardInterrupt:  # Ctrl-C ends a live feed: its last frames are scored as a video's end
            stopped = True
        n = scorer.frames_seen  # the frames read (a frame the interrupt caught with the workers is dropped)
        if n == 0:
            raise InvalidInputError(f"--video {args.video}: expected at least one frame, got none")
        latency = scorer.latency
        write(scorer.flush())
    dt = time.time() - t0
    print(f"{'stopped after ' if stopped else ''}{n} frames in {dt:.1f}s ({n / max(dt, 1e-9):.1f} frames/s); each "
          f"score final {latency} frames after its frame ({'causal' if args.causal else 'centred'} smoothing, "
          f"sigma {args.sigma:g})", file=sys.stderr)
    if alerting:
        spans = ", ".join(f"{a}-{b}" for a, b in intervals)
        print(f"alerts: {n_alerts[0]} of {n} frames above threshold {scorer.threshold:.6g}, in {len(intervals)} "
              f"interval{'' if len(intervals) == 1 else 's'}{' (frames ' + spans + ')' if intervals else ''}",
              file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    from . import metrics

    scores = load_scores(args.scores)  # first: it names a feature file given as --scores
    if os.path.isfile(args.labels) and os.path.samefile(args.scores, args.labels):
        raise InvalidInputError(f"--scores and --labels: expected a score file and a label file, got the same file "
                                f"twice ({args.scores})")
    labels = _load_labels(args.labels, scores, allow_subset=args.subset)
    if all(np.isin(v, (0, 1)).all() for v in scores.values()):  # labels scored against labels: an AUC near 1
        print(f"warning: every score in {args.scores} is 0 or 1, as in a label file; is it the score file "
              f"`llsh-index score` wrote?", file=sys.stderr)
    res = metrics.evaluate(scores, labels, sigma=args.sigma, align=args.align, allow_subset=args.subset,
                           single_class=args.single_class)
    how = "skipped in" if args.single_class == "skip" else "in, frame 0's label flipped, as the authors' code does, for"
    # under flip, a one-frame video has no second class to flip to: skipped, and said so
    unflipped = [v for v in res.macro.single_class_videos if v not in res.macro.per_video] \
        if args.single_class == "flip" else []
    if unflipped:
        how = f"in ({len(unflipped)} of one frame skipped), frame 0's label flipped, as the authors' code does, for"
    macro = f"macro-AUC {res.macro.auc:.4f}" if res.macro.auc is not None else \
        f"macro-AUC undefined ({res.macro.undefined})"
    print(f"micro-AUC {res.micro.auc:.4f}  {macro}  "
          f"({res.macro.n_videos} videos, {res.macro.n_single_class} single-class {how} macro; sigma {args.sigma})")
    constant = res.micro.constant_videos
    if constant:  # their AUC is 0.5 by construction, not a measurement
        print(f"warning: {len(constant)} of {res.micro.n_videos} videos have constant scores after smoothing "
              f"({', '.join(constant[:8])}{', ...' if len(constant) > 8 else ''}): they rank all their frames alike "
              f"(an AUC of 0.5 within the video) and are not min-max normalised for micro-AUC", file=sys.stderr)
    if args.per_video:
        single = set(res.macro.single_class_videos)
        for v in sorted(set(res.macro.per_video) | single, key=str):
            if v in single and v not in res.macro.per_video:
                print(f"  {v}  single-class (all {'anomalous' if labels[v][0] else 'normal'}"
                      f"{', one frame: nothing to flip against' if v in unflipped else ''}), not in macro-AUC")
            elif v in single:
                print(f"  {v}  {res.macro.per_video[v]:.4f}  (single-class, all "
                      f"{'anomalous' if labels[v][0] else 'normal'}: frame 0's label flipped)")
            else:
                print(f"  {v}  {res.macro.per_video[v]:.4f}{'  (constant scores)' if v in constant else ''}")
    if args.json:
        _write_text(args.json, json.dumps({
            "micro_auc": res.micro.auc, "macro_auc": res.macro.auc,  # null where undefined, and why:
            **({"macro_undefined": res.macro.undefined} if res.macro.auc is None else {}),
            "sigma": args.sigma, "align": args.align,
            "n_videos": res.macro.n_videos, "n_single_class": res.macro.n_single_class,
            "single_class": args.single_class,
            "single_class_videos": list(res.macro.single_class_videos), "n_constant": res.micro.n_constant,
            "constant_videos": list(constant), "n_frames": res.micro.n_frames,
            "per_video_auc": res.macro.per_video, "scores": os.path.abspath(args.scores),
            "labels": os.path.abspath(args.labels),
            "scoring": load_score_meta(args.scores)}, indent=1))  # provenance: how the scores were made
    return 0


def plot_curves(path: str, curves: Dict[str, Dict[str, np.ndarray]], labels: Dict[str, np.ndarray],
                videos: Sequence[str], sigma: float = 12, title: str = "") -> None:
    """Per-video score curves (smoothed, min-max normalised) with the anomalous frames shaded, and
    each curve's frame-level AUC on that video in the legend (as the micro-AUC sees the curve)."""
    from matplotlib.patches import Patch
    from sklearn.metrics import roc_auc_score

    from .metrics import smooth_scores

    fmt = _image_format(path)
    with _figure(len(videos), 1, figsize=(9, 1.35 + 1.6 * len(videos)), squeeze=False, sharey=True) as (fig, axes):
        for ax, v in zip(axes[:, 0], videos):
            lab = labels[v].astype(bool)
            edges = np.flatnonzero(np.diff(np.r_[0, lab.astype(int), 0]))
            for a, b in zip(edges[::2], edges[1::2]):
                ax.axvspan(a, b - 1, color="tab:red", alpha=0.15, lw=0)
            handles = []
            for i, (name, per_video) in enumerate(curves.items()):
                s = smooth_scores(per_video[v], sigma)
                rng = s.max() - s.min()
                s = (s - s.min()) / rng if rng > 0 else s * 0
                auc = f"AUC {roc_auc_score(lab, s):.3f}" if lab.any() and not lab.all() else "one class"
                handles += ax.plot(s, lw=1.3, color=f"C{i}", ls=_line_style(i), label=f"{name} ({auc})")
            if lab.any():
                handles.append(Patch(color="tab:red", alpha=0.15, label="labelled anomalous"))
            ax.legend(handles=handles, loc="upper left", fontsize=7, ncol=min(len(handles), 4), framealpha=0.8)
            ax.set_ylabel(f"video {v}", rotation=0, ha="right", va="center")
            ax.set_xlim(0, len(lab) - 1)
            ax.set_ylim(-0.05, 1.45)  # headroom for the legend
            ax.set_yticks([0, 1])
        axes[-1, 0].set_xlabel("frame")
        sub = f"scores smoothed (Gaussian, sigma {sigma:g} frames) and min-max normalised per video, as micro-AUC"
        axes[0, 0].set_title(f"{title}\n{sub}" if title else f"Anomaly score per frame\n{sub}", fontsize=9)
        fig.tight_layout()
        _save_figure(fig, path, fmt)


def _line_style(i: int) -> str:
    """The i-th curve's line style: solid, then dashed, dotted, dash-dotted, so a curve drawn over an
    equal one leaves it visible through its gaps."""
    return ("-", "--", ":", "-.")[i % 4]


def _image_format(path: str) -> str:
    """The matplotlib format of `path`'s extension, refused before any drawing when there is none."""
    from matplotlib.figure import Figure

    fmt = os.path.splitext(path)[1][1:].lower()
    formats = Figure().canvas.get_supported_filetypes()  # a detached figure: pyplot's are left alone
    if fmt not in formats:
        raise ConfigError(f"plot: {path!r} has no image extension matplotlib writes; expected one of "
                          f"{', '.join(sorted('.' + k for k in formats))}")
    return fmt


@contextlib.contextmanager
def _figure(*args, **kwargs):
    """plt.subplots(), closed however the drawing ends (pyplot keeps every open figure alive)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
    finally:
        plt.close(fig)


def _save_figure(fig, path: str, fmt: str) -> None:
    from .io import atomic_write

    with atomic_write(path) as f:
        fig.savefig(f, format=fmt, dpi=110)


def cmd_plot(args) -> int:
    if args.align is not None and not args.roc:
        raise ConfigError(f"plot: --align {args.align} applies to --roc (the score curves need one score per "
                          f"labelled frame), got it without --roc")
    if args.subset and not (args.roc and not args.videos):
        raise ConfigError("plot: --subset applies to --roc over every video (--videos names the videos itself), "
                          f"got it {'with --videos' if args.roc else 'without --roc'}")
    from .metrics import MissingVideoError

    files = args.scores
    curves = {}
    for path in files:
        name = os.path.splitext(os.path.basename(path))[0]
        while name in curves:  # two files of one name from different folders
            name += "'"
        curves[name] = load_scores(path)
    first = curves[next(iter(curves))]
    # --roc over every video pools each file's videos as evaluate does: files of other videos would be
    # pooled over their common videos only (a micro-AUC evaluate does not give), and a file short of
    # labelled videos needs --subset there
    pooled = args.roc and not args.videos
    if pooled:
        every = set().union(*curves.values())
        lacking = {name: sorted(every - set(c), key=str) for name, c in curves.items() if every - set(c)}
        if lacking:
            raise MissingVideoError(
                "--roc: expected score files of the same videos (each file's frames are pooled, as evaluate pools "
                "them), got files that lack some: " + "; ".join(
                    f"{name} lacks {', '.join(map(str, vs[:5]))}{', ...' if len(vs) > 5 else ''}"
                    for name, vs in lacking.items()) + " (--videos names the videos to pool in every file)")
    labels = _load_labels(args.labels, first, allow_subset=args.subset or not pooled)
    if pooled:
        unlabelled = sorted(set(first) - set(labels), key=str)
        unscored = [] if args.subset else sorted(set(labels) - set(first), key=str)
        if unlabelled or unscored:
            raise MissingVideoError(
                f"--roc: expected scores for all {len(labels)} labelled videos and labels for every scored one, as "
                f"evaluate does, got " + ("; ".join(
                    ([f"{len(unlabelled)} scored video(s) without labels: {unlabelled[:5]}"
                      f"{' ...' if len(unlabelled) > 5 else ''}"] if unlabelled else [])
                    + ([f"no scores for {unscored[:5]}{' ...' if len(unscored) > 5 else ''} (--subset pools the "
                        f"scored videos only)"] if unscored else []))))
    common = [v for v in first if v in labels and all(v in c for c in curves.values())]
    if args.videos == "all" or (args.roc and not args.videos):  # a ROC curve pools every video by default
        videos = common
    elif args.videos:
        videos = [v.strip() for v in args.videos.split(",") if v.strip()]
    else:
        videos = common[:6]
    if not common:  # nothing to draw: say which names each file has, not an empty list
        raise InvalidInputError(f"--scores / --labels: expected videos named in both, got none in common (scores: "
                                f"{', '.join(list(first)[:5])}{', ...' if len(first) > 5 else ''}; labels: "
                                f"{', '.join(list(labels)[:5])}{', ...' if len(labels) > 5 else ''})")
    videos = list(dict.fromkeys(videos))  # a name given twice is one panel
    missing = [v for v in videos if v not in common]
    if missing or not videos:
        raise InvalidInputError(f"--videos: expected names with scores and labels ({', '.join(common[:8])}"
                                f"{', ...' if len(common) > 8 else ''}), got {missing or videos}")
    for name, per_video in curves.items():  # one score per labelled frame, as evaluate requires
        for v in videos:
            if np.asarray(per_video[v]).shape != labels[v].shape and args.align != "centre":
                hint = " (--roc --align centre places fewer scores on the frames)" if (
                    np.asarray(per_video[v]).size < labels[v].size) else ""
                raise InvalidInputError(f"{name}: video {v!r}: expected {labels[v].shape[0]} per-frame scores "
                                        f"(its labels), got shape {np.asarray(per_video[v]).shape}{hint}")
    if args.roc:
        for name, auc in plot_roc(args.out, curves, labels, videos, args.sigma, title=args.title,
                                  align=args.align or "exact").items():
            print(f"{name}: micro-AUC {auc:.4f}")
        print(f"ROC over {len(videos)} videos -> {args.out}")
        return 0
    plot_curves(args.out, curves, labels, videos, args.sigma, title=args.title)
    more = "" if args.videos else f" (the first {len(videos)} of {len(common)}; --videos all for every one)"
    print(f"{len(videos)} videos{more} -> {args.out}")
    return 0


def plot_roc(path: str, curves: Dict[str, Dict[str, np.ndarray]], labels: Dict[str, np.ndarray],
             videos: Sequence[str], sigma: float = 12, title: str = "", align: str = "exact") -> Dict[str, float]:
    """The micro ROC curve of every score file (the curve whose area micro-AUC is), with that area in
    the legend; returns {name: micro-AUC}.  align: as llsh_index.metrics.micro_auc's."""
    from sklearn.metrics import auc as area

    from .metrics import micro_roc_curve

    fmt = _image_format(path)
    aucs = {}
    with _figure(1, 1, figsize=(5.4, 5.2)) as (fig, ax):
        for i, (name, per_video) in enumerate(curves.items()):
            fpr, tpr, _ = micro_roc_curve({v: per_video[v] for v in videos}, {v: labels[v] for v in videos}, sigma,
                                          align=align)
            aucs[name] = float(area(fpr, tpr))
            ax.plot(fpr, tpr, lw=1.4, color=f"C{i}", ls=_line_style(i),
                    label=f"{name} (micro-AUC {aucs[name]:.4f})")
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="chance")
        ax.set_xlabel("false positive rate (normal frames flagged)")
        ax.set_ylabel("true positive rate (anomalous frames flagged)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.legend(loc="lower right", fontsize=8)
        sub = f"{len(videos)} videos, frames pooled; sigma {sigma:g}, each video min-max normalised"
        ax.set_title(f"{title}\n{sub}" if title else f"Frame-level ROC\n{sub}", fontsize=9)
        fig.tight_layout()
        _save_figure(fig, path, fmt)
    return aucs


def index_info(index, queries_by_video: Optional[Dict[str, np.ndarray]] = None) -> dict:
    """What `llsh-index info` reports: the index's settings, its tables' occupancy
    (LearnableLSHIndex.stats()) and, for the given snippets, how often their keys find a bucket."""
    info = {"kind": "LLSH (trained hash layers)" if index.is_trained else "LSH (untrained hash layers)",
            "dim": index.dim, "n_tables": index.n_tables, "n_bits": index.n_bits, "mode": index.mode,
            "code_dtype": index.code_dtype if index.store_codes else None, "n_items": index.ntotal,
            "memory_bytes": index.memory_bytes(), "miss_value": float(index.default_miss_value()),
            "feature_space": index.feature_space_}
    if index.training_config_ is not None:
        from dataclasses import asdict

        info["training"] = asdict(index.training_config_)
    if index.ntotal:
        info["tables"] = index.stats()
    if queries_by_video:
        if not index.ntotal:
            raise ConfigError("info --features: the index holds no items (a `fit` output), so every snippet misses; "
                              "index the training features first (llsh-index build --model ...)")
        sizes = np.concatenate([index.query_bucket_sizes(q) for q in queries_by_video.values()])
        hit = sizes > 0
        info["queries"] = {"n_snippets": int(len(sizes)), "n_videos": len(queries_by_video),
                           "hit_rate": hit.mean(axis=0).tolist(), "miss_every_table": float((~hit.any(axis=1)).mean()),
                           "mean_tables_hit": float(hit.sum(axis=1).mean()),
                           "mean_bucket_hit": float(sizes[hit].mean()) if hit.any() else 0.0}
    return info


def plot_index_info(path: str, index, info: dict, features_name: str = "") -> None:
    """Per table: the bucket sizes in decreasing order, the key bits that vary among the items and,
    with queries, the share of them whose bucket exists."""
    from matplotlib import cm

    fmt = _image_format(path)
    tables, queries = info["tables"], info.get("queries")
    b = index.n_tables
    with _figure(1, 3 if queries else 2, figsize=(13 if queries else 9, 3.6)) as (fig, axes):
        ax = axes[0]
        for j in range(b):
            sizes = np.sort(index.bucket_sizes(j))[::-1]
            ax.plot(np.arange(1, len(sizes) + 1), sizes, lw=1, color=cm.viridis(j / max(b - 1, 1)),
                    label=f"table {j}" if b <= 10 else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("bucket rank")
        ax.set_ylabel("items in the bucket")
        ax.set_title(f"bucket sizes ({info['n_items']:,} items per table)", fontsize=9)
        if b <= 10:
            ax.legend(fontsize=7)
        x = np.arange(b)
        axes[1].bar(x, tables["active_bits"], color="tab:blue")
        axes[1].axhline(index.n_bits, color="grey", ls="--", lw=1, label=f"n_bits = {index.n_bits}")
        axes[1].set_xlabel("table")
        axes[1].set_ylabel("key bits that vary among the items")
        axes[1].set_title("active key bits (the others are constant)", fontsize=9)
        axes[1].set_ylim(0, 1.25 * index.n_bits)  # the legend's band above the bars, as for the hits
        axes[1].legend(fontsize=7, loc="upper center")
        if queries:
            axes[2].bar(x, 100 * np.asarray(queries["hit_rate"]), color="tab:green")
            axes[2].axhline(100 * (1 - queries["miss_every_table"]), color="tab:red", ls="--", lw=1,
                            label=f"hit at least one table: {100 * (1 - queries['miss_every_table']):.1f}%")
            axes[2].set_ylim(0, 125)  # the legend's band above the bars (which reach 100%), clear of them
            axes[2].set_yticks(range(0, 101, 20))
            axes[2].set_xlabel("table")
            axes[2].set_ylabel("% of snippets whose bucket exists")
            axes[2].set_title(f"hits of {features_name or 'the queries'} ({queries['n_snippets']:,} snippets)", fontsize=9)
            axes[2].legend(fontsize=7, loc="upper center")
        for a in axes[1:]:
            a.set_xticks(x if b <= 16 else x[:: max(b // 8, 1)])
        fig.suptitle(f"{info['kind']}: {b} tables x {index.n_bits} bits, mode {index.mode}", fontsize=10)
        fig.tight_layout()
        _save_figure(fig, path, fmt)


def cmd_info(args) -> int:
    if args.plot:
        _image_format(args.plot)  # before any work
    if args.prefix is not None and not args.features:
        raise ConfigError("info: --prefix selects videos of --features, and no --features was given")
    if args.allow_other_features and not args.features:
        raise ConfigError("info: --allow-other-features lets --features differ from the index's feature space, and "
                          "no --features was given")
    index = _load_index(args.index, "--index")
    queries = None
    if args.features:
        ff = _load_feature_file(args.features)
        _check_feature_space(index, ff.meta, args.index, args)
        queries = {v: ff.features[v] for v in _select_scored(ff, args.prefix, args.features)}
    info = index_info(index, queries)
    codes = f"codes {info['code_dtype']}" if info["code_dtype"] else "bucket statistics only"
    print(f"{args.index}: {info['kind']}, dim {info['dim']}, {index.n_tables} tables x {index.n_bits} bits, "
          f"mode {index.mode}, {codes}, {index.ntotal:,} items, {info['memory_bytes'] / 2 ** 20:.2f} MiB")
    if "training" in info:
        t = info["training"]
        print("trained: " + ", ".join(f"{k} {t[k]}" for k in ("iterations", "epochs", "lr", "temperature", "queue_size",
                                                               "max_offset", "project_pcs") if k in t))
    if info["feature_space"]:
        print("built on features of " + ", ".join(f"{k} {v}" for k, v in info["feature_space"].items()
                                                  if not isinstance(v, dict)))
    if not index.ntotal:
        print("no indexed items (a `fit` output): llsh-index build --model ... indexes the training features")
        if args.plot:
            raise ConfigError("info --plot: the index holds no items, there are no tables to draw")
    else:
        st, q = info["tables"], info.get("queries")
        head = f"{'table':>5} {'buckets':>8} {'largest':>8} {'bucket of an item':>18} {'active bits':>12}"
        print(head + (f" {'hits':>7}" if q else ""))
        for j in range(index.n_tables):
            line = (f"{j:>5} {st['n_buckets'][j]:>8,} {st['largest_bucket'][j]:>8,} "
                    f"{st['mean_bucket_seen_by_item'][j]:>18.1f} {st['active_bits'][j]:>8} / {index.n_bits:<3}")
            print(line + (f" {100 * q['hit_rate'][j]:>6.1f}%" if q else ""))
        if q:
            print(f"{args.features}: {q['n_snippets']:,} snippets of {q['n_videos']} videos hit "
                  f"{q['mean_tables_hit']:.2f} of {index.n_tables} tables on average (a hit bucket holds "
                  f"{q['mean_bucket_hit']:.1f} items); {100 * q['miss_every_table']:.1f}% miss every table and "
                  f"score the miss value {info['miss_value']:g}")
            if q["miss_every_table"] > 0.05:
                print("hint: `score --miss-probes 32` looks those snippets up again in the buckets of nearby keys; "
                      "an index with fewer --n-bits has coarser buckets")
        if args.plot:
            plot_index_info(args.plot, index, info, os.path.basename(args.features or ""))
            print(f"-> {args.plot}")
    if args.json:
        _write_text(args.json, json.dumps(dict(info, index=os.path.abspath(args.index),
                                               features=args.features and os.path.abspath(args.features)), indent=1))
    return 0


def _fmt_auc(auc: Optional[float], digits: int = 4) -> str:
    """An AUC for a table or a log (the demo, benchmarks/table2.py): metrics.evaluate's macro-AUC is None
    where no video has both classes, which a :.4f format refused with a TypeError."""
    return "undefined" if auc is None else f"{auc:.{digits}f}"


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
            print(f"  {name:<26s} micro {res.micro.auc:.4f}  macro {_fmt_auc(res.macro.auc)}", flush=True)

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
    # a snippet missing every table scores at the edge of the training rows' hits, not sqrt(r) (ours)
    t0 = time.perf_counter()
    edge = llsh.empty_like(miss_value=llsh.largest_hit_distance(x)).add(x)
    build = time.perf_counter() - t0
    s, t = per_video(edge.score)
    record("LLSH, miss value at the hits' edge", train_s, build, s, t)

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
        table.append(f"| {r['method']} | {r['micro_auc']:.4f} | {_fmt_auc(r['macro_auc'])} | {r['train_s']:.2f} | "
                     f"{r['build_s']:.3f} | {r['score_s']:.3f} |")
    plot_path = os.path.join(out_dir, "ped2_scores.png")
    try:
        keep = [n for n in ("LLSH", f"KNN k={DEMO_KNN_K}", "LSH") if n in curves]
        plot_curves(plot_path, {n: curves[n] for n in keep}, labels, test_names[:6],
                    title=f"Ped2 test videos 01-06 (llsh-index demo, seed {seed})")
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
LABELS_HELP = ("per-frame labels: a label .npz (video -> per-frame 0/1, e.g. ../shared/data/vad_groundtruth/"
               "Avenue_gt.npz), a feature file extracted with labels, or UCSD's ped2.mat")
PREFIX_HELP = "only the videos whose name starts with this"
ALLOW_OTHER_HELP = ("use features made otherwise than those the index (build: the --model layers) was built on "
                    "(another extractor or extractor settings, T, s, clamping: the index records them), which "
                    "are refused by default")
ALIGN_CHOICES = ("exact", "centre")  # llsh_index.metrics' align policies
ALIGN_HELP = ("how scores meet the labels: exact (default), one score per labelled frame; centre, fewer scores "
              "(one per snippet start position, as from the reference code) placed in the middle of the video's "
              "frames, the frames left over scoring 0, as the reference does (scores of one snippet per K frames, "
              "leaving most frames over, are refused: `import --snippet-frames K` + `score` make per-frame ones)")
QUIET_HELP = "no progress bar (the summary line is still printed)"
SIGMA_HELP = "Gaussian smoothing of each video's scores, in frames (default 12, the paper's; 0: none)"

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llsh-index", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the whole path on the bundled Ped2 features (no data needed)",
                       description="Trains LLSH on the bundled Ped2 features (16 normal training videos), indexes "
                                   "them, scores the 12 test videos and prints micro- and macro-AUC with the times "
                                   "for LSH, LLSH, light-LLSH, multi-probe, exact KNN and K-means; writes the table "
                                   "(JSON), the trained index and a plot of score curves to --out.")
    p.add_argument("--out", type=output_folder, default="llsh_demo",
                   help="folder for the plot, table and index (default llsh_demo)")
    p.add_argument("--features", default=None,
                   help="another feature file in the demo layout (default: the bundled llsh_index/data/"
                        "ped2_demo.npz): one file holding both splits, its videos named 'train/<video>' (normal) "
                        "and 'test/<video>' (with per-frame labels), as scripts/make_demo_features.py writes; "
                        "not an `extract` output (one split): run fit / build / score / evaluate on those")
    p.add_argument("--iterations", type=int, default=None, help="override the demo's training length")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the LSH / LLSH layers and of training, 0..2**32-1 (default 0; the AUCs vary with it, "
                        "see benchmarks/RESULTS.md)")
    p.add_argument("--quiet", action="store_true", help="print the table only (no per-method lines, no progress bar)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("extract", help="videos (frame folders) -> cached snippet features (.npz)")
    p.add_argument("--dataset", choices=["ped2", "avenue", "shanghaitech", "corridor", "folders"], required=True,
                   help="the layout under --root: a benchmark's, or 'folders' (one folder of frames per video)")
    p.add_argument("--root", required=True, help="dataset root (for 'folders': a folder of frame folders)")
    p.add_argument("--split", choices=["train", "test"], default=None,
                   help="the benchmark's training (normal) or test videos (default train; not for 'folders')")
    p.add_argument("--out", required=True,
                   help="feature file to write; one there already is reused when it holds the features asked for "
                        "(the same videos, read from the same folders or files, extractor, --T, --s, labels), and "
                        "otherwise refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a file at --out that holds anything else (other videos or settings, videos read "
                        "from elsewhere, other labels, an older file that does not record where its videos were "
                        "read from, not a feature file); with only other labels, the features are kept")
    p.add_argument("--labels", default=None,
                   help="test labels kept in the feature file: ped2, the ped2.mat file; avenue / shanghaitech / "
                        "corridor / folders, a label .npz (video -> per-frame 0/1, e.g. ../shared/data/vad_groundtruth/"
                        "Avenue_gt.npz); default: looked for under --root (folders: none)")
    p.add_argument("--videos", default=None, help="comma-separated video names: extract only these (default: all)")
    p.add_argument("--skip-first-frame", choices=["auto", "yes", "no"], default="auto",
                   help="corridor: skip each video's black first frame, which its labels leave out (auto, the "
                        "default: in video files, and in a frame folder when its first frame is black and, with "
                        "labels, it holds one frame more than they do)")
    p.add_argument("--T", type=int, default=16, help="frames per snippet (default 16)")
    p.add_argument("--s", type=int, default=1, help="frame step inside a snippet (default 1)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(fn=cmd_extract)

    p = sub.add_parser("import", help="pre-extracted per-video .npy features (I3D, ...) -> a feature file",
                       description="A folder of <video><suffix>.npy arrays, (n_snippets, dim) or (n_snippets, "
                                   "n_crops, dim), into the feature file the other commands read, with the labels "
                                   "of a label .npz and each snippet aligned to the middle frame of its "
                                   "--snippet-frames frames (llsh_index.feature_arrays).")
    p.add_argument("--folder", required=True, help="folder of per-video .npy feature arrays")
    p.add_argument("--out", required=True, help="feature file to write")
    p.add_argument("--labels", default=None,
                   help="label .npz (video -> per-frame 0/1, e.g. ../shared/data/vad_groundtruth/ST_gt.npz): its "
                        "videos' frame counts and labels; default: none (training videos)")
    p.add_argument("--snippet-frames", type=positive_int, default=None,
                   help="frames per snippet (16 for I3D); default: one snippet per frame")
    p.add_argument("--crops", type=_crops, default="mean",
                   help="for (n_snippets, n_crops, dim) arrays: 'mean' over the crops (default) or a crop index")
    p.add_argument("--suffix", default="",
                   help="file name ending before .npy that is not part of the video name (e.g. _i3d)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="stored features (float16 halves the file)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("fit", help="train the hash layers (MoCo) on training features")
    p.add_argument("--features", required=True, help="training feature file (from `extract`)")
    p.add_argument("--prefix", default=None, help=PREFIX_HELP)
    p.add_argument("--out", required=True, help="file for the trained layers (an empty index: `build --model` fills it)")
    _add_index_args(p, "seed of the hash layers' initialisation and of training, 0..2**32-1 (default 0)")
    _add_training_args(p)
    static = FALLBACK_DEFAULTS
    p.add_argument("--static", action="store_true",
                   help="static data, such as imported image embeddings (one 'video' per category): no video ids, "
                        "the rows are independent samples, each one's positive one of its nearest rows (Python: "
                        "index.fit(x) without video_ids); the static-data fallback's settings (iterations "
                        f"{static['iterations']} per "
                        f"row, batch {static['batch_size']}, lr {static['lr']:g}, tau {static['temperature']:g}, queue "
                        f"{static['queue_size']}, momentum {static['momentum']:g}, {static['project_pcs']} principal "
                        "directions and the mean projected out: training.FALLBACK_DEFAULTS) apply unless the options "
                        "above override them; not with --schedule or --max-offset")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(fn=cmd_fit)

    p = sub.add_parser("build", help="index training features (with trained layers, or plain LSH)")
    p.add_argument("--features", required=True, help="training feature file (from `extract`)")
    p.add_argument("--prefix", default=None, help=PREFIX_HELP)
    p.add_argument("--model", default=None, help="layers from `fit`; without it, untrained LSH layers")
    p.add_argument("--out", required=True, help="index file to write")
    _add_index_args(p, "seed of the untrained LSH layers, 0..2**32-1 (default 0); not with --model, whose layers "
                       "are fixed")
    p.add_argument("--allow-other-features", action="store_true", help=ALLOW_OTHER_HELP)
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(fn=cmd_build)

    p = sub.add_parser("score", help="per-video, per-frame anomaly scores (.npz, optional .csv)")
    p.add_argument("--index", required=True, help="index file from `build` (or a folder of shard files)")
    p.add_argument("--features", required=True, help="feature file of the videos to score (from `extract`)")
    p.add_argument("--prefix", default=None, help=PREFIX_HELP)
    _add_scoring_args(p)
    p.add_argument("--out", required=True,
                   help="score file to write (.npz: video -> per-frame scores, and `__meta__`: the settings as "
                        "JSON; llsh_index.cli.load_scores reads the scores)")
    p.add_argument("--csv", default=None, help="also write the scores as CSV (video,frame,score); - for standard output (the "
                        "command's own lines then go to stderr)")
    p.add_argument("--allow-other-features", action="store_true", help=ALLOW_OTHER_HELP)
    p.set_defaults(fn=cmd_score)

    p = sub.add_parser("stream", help="score a video frame by frame, as a live feed (CSV lines on stdout)",
                       description="Frames in, one CSV line (frame,score,raw) per frame on stdout as soon as its "
                                   "score is final: the offline pipeline's scores (EfficientNet-Lite0 snippets of "
                                   "--T frames, the index's score, Gaussian smoothing), each LATENCY frames after "
                                   "its frame (55 at T 16, sigma 12; --causal: 7; plus one per CNN worker thread beyond the first, one "
                                   "a CPU core) (llsh_index.stream).  With --threshold (or --calibrate) a fourth "
                                   "column, alert, is 1 where the smoothed score is strictly above the threshold, and "
                                   "the alert intervals are printed on stderr at the end.")
    p.add_argument("--index", required=True, help="index file from `build` (or a folder of shard files), on features "
                                                  "from `extract` (same --T, --s)")
    p.add_argument("--video", required=True,
                   help="a frame folder, a video file, or a stream URL (rtsp://camera/..., http://...: a live feed)")
    p.add_argument("--T", type=positive_int, default=16, help="frames per snippet (default 16)")
    p.add_argument("--s", type=positive_int, default=1, help="frame step inside a snippet (default 1)")
    p.add_argument("--sigma", type=nonnegative_float, default=12, help=SIGMA_HELP)
    p.add_argument("--causal", action="store_true",
                   help="smooth over past frames only (a score is final once its snippet is; not the paper's "
                        "protocol)")
    _add_scoring_args(p)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu): the CNN and the index")
    p.add_argument("--threshold", type=float, default=None,
                   help="alerts: a frame whose smoothed score is strictly above this is abnormal; adds an 'alert' "
                        "column (0/1) and, at the end on stderr, the alert intervals (first-last frame)")
    p.add_argument("--calibrate", default=None, metavar="FEATURES",
                   help="alerts with a threshold computed from normal video instead: a feature file from `extract` "
                        "(same --T, --s, default clamping) of the videos the index was built on, scored "
                        "leave-videos-out (as LLSHDetector calibrates; trained layers are retrained without each "
                        "fold of videos, one fit more per fold), or with --held-out of normal videos not in "
                        "the index; the threshold is the (1 - --contamination) quantile of their frames' smoothed "
                        "scores (the stream's smoothing)")
    p.add_argument("--contamination", type=float, default=None,
                   help="with --calibrate: the fraction of normal frames expected to alert, in (0, 0.5] "
                        "(default 0.01)")
    p.add_argument("--held-out", action="store_true",
                   help="with --calibrate: its videos are not in the index (scored by the index itself)")
    p.add_argument("--allow-other-features", action="store_true", help=ALLOW_OTHER_HELP)
    p.set_defaults(fn=cmd_stream)

    p = sub.add_parser("evaluate", help="frame-level micro/macro AUC with the VAD protocol",
                       description="Frame-level AUC with the LLSH paper's protocol: each video's scores are smoothed "
                                   "with a Gaussian (--sigma); macro-AUC is the mean of the per-video AUCs, micro-AUC "
                                   "is one AUC over all frames after each video's smoothed scores are min-max "
                                   "normalised to [0, 1]. A video with one class only has no AUC: by default it is "
                                   "left out of macro-AUC and counted; --single-class flip keeps it with frame 0's "
                                   "label flipped, as the authors' code does (their published macro figures; it "
                                   "matters where such videos exist: ShanghaiTech 1, Corridor 16, Ped2 4).")
    p.add_argument("--scores", required=True, help="score file from `score`")
    p.add_argument("--labels", required=True, help=LABELS_HELP)
    p.add_argument("--sigma", type=float, default=12, help=SIGMA_HELP)
    p.add_argument("--per-video", action="store_true",
                   help="also print every video's AUC (and which videos are single-class)")
    p.add_argument("--single-class", choices=["skip", "flip"], default="skip",
                   help="macro-AUC of a video with one label class only: skip it (default; counted and named), or "
                        "flip frame 0's label and keep it, as the authors' code does")
    p.add_argument("--subset", action="store_true",
                   help="evaluate the scored videos only, where the labels cover more (e.g. after extract --videos)")
    p.add_argument("--align", choices=ALIGN_CHOICES, default="exact", help=ALIGN_HELP)
    p.add_argument("--json", default=None, help="also write the results (per-video AUCs included) to this JSON file; - for standard "
                        "output (the printed lines then go to stderr), e.g. `--json - | jq .micro_auc`")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("merge", help="index files built on the same layers -> one index of all their items",
                       description="Appends the items of each --index file, in the order given, into one index (the "
                                   "first file's settings: mode, miss value). The files must share their hash layers "
                                   "(`build --model` with one `fit` output, or plain `build`s with one --seed), code "
                                   "dtype and storage (light / squared indexes without codes merge only with each "
                                   "other) and, where they record it, the feature space. The result scores exactly "
                                   "as one `build` of all the features would.")
    p.add_argument("--index", required=True, nargs="+",
                   help="two or more index files from `build` (or folders of shard files; one folder alone "
                        "becomes one index file)")
    p.add_argument("--out", required=True, help="index file to write")
    p.set_defaults(fn=cmd_merge)

    p = sub.add_parser("info", help="an index's settings and tables (bucket sizes, active bits), and how "
                                    "often given snippets find a bucket",
                       description="Prints the index's settings and, per table, its buckets, the largest, the mean "
                                   "bucket of an item, and the key bits that vary among the items. With --features, "
                                   "the share of those snippets whose bucket exists in each table, and of those "
                                   "that miss every table (they score the miss value).")
    p.add_argument("--index", required=True,
                   help="index file from `build` (or layers from `fit`, or a folder of shard files)")
    p.add_argument("--features", default=None, help="a feature file whose snippets are looked up (e.g. the test videos)")
    p.add_argument("--prefix", default=None, help=PREFIX_HELP)
    p.add_argument("--plot", default=None, help="also draw the tables (and the hits) to this image (.png, .pdf, ...)")
    p.add_argument("--allow-other-features", action="store_true", help=ALLOW_OTHER_HELP)
    p.add_argument("--json", default=None, help="also write everything printed to this JSON file; - for standard output (the "
                        "printed lines then go to stderr)")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("plot", help="score curves with the labelled anomalous frames shaded (an image)",
                       description="Draws each video's smoothed, min-max normalised score curve, one line per score "
                                   "file, with the labelled anomalous frames shaded and each file's AUC on that "
                                   "video (like the LLSH paper's Fig. 5); --roc draws frame-level ROC curves "
                                   "instead. The format follows --out's extension (.png, .pdf, .svg, ...).")
    p.add_argument("--scores", required=True, nargs="+",
                   help="one or more score files (from `score`), drawn as one curve each, named after the file")
    p.add_argument("--labels", required=True, help=LABELS_HELP)
    p.add_argument("--out", required=True, help="image file (.png, .pdf, .svg, ...)")
    p.add_argument("--videos", default=None,
                   help="comma-separated video names, or 'all' (default: the first 6)")
    p.add_argument("--sigma", type=float, default=12, help=SIGMA_HELP)
    p.add_argument("--title", default="", help="a title above the curves")
    p.add_argument("--roc", action="store_true",
                   help="draw each file's frame-level ROC curve instead (the curve whose area is micro-AUC; "
                        "over every video unless --videos)")
    p.add_argument("--align", choices=ALIGN_CHOICES, default=None,
                   help="with --roc: " + ALIGN_HELP + " (the score curves need one score per labelled frame)")
    p.add_argument("--subset", action="store_true",
                   help="with --roc: pool the scored videos only, where the labels cover more (as evaluate --subset); "
                        "without it every labelled video needs scores in every file")
    p.set_defaults(fn=cmd_plot)
    return ap


# the options that name files a command reads, and those it writes
_INPUT_OPTIONS = ("features", "index", "model", "scores", "labels", "calibrate", "video")
_OUTPUT_OPTIONS = ("out", "csv", "json", "plot")


def _check_outputs(args) -> List[str]:
    """Before the command's work: output files that can never be written (a folder, a device, a path
    under a file) fail, and so does an output that is one of the command's own inputs, or another
    of its outputs (score --out f.npz --features f.npz replaced the features with the scores).
    Returns the folders it made (demo --out and any missing parents, deepest first), which main()
    removes again if the command fails."""
    from .errors import WritePathError
    from .io import check_folder_path, check_write_path

    made = []
    if args.command == "demo":  # demo --out is a folder it fills: made now, so a bad place fails before training
        check_folder_path(args.out)
        part = os.path.abspath(args.out)
        while not os.path.isdir(part):  # the folders makedirs will create, deepest first
            made.append(part)
            part = os.path.dirname(part)
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as exc:
            raise WritePathError(f"--out {args.out}: cannot create the folder: {exc.strerror or exc}") from exc
    inputs = []
    for name in _INPUT_OPTIONS:
        value = getattr(args, name, None)
        for path in (value if isinstance(value, list) else [value]):
            if isinstance(path, str) and os.path.isfile(path):
                inputs.append((name, path))
    written = []
    for name in _OUTPUT_OPTIONS:
        path = getattr(args, name, None)
        if path is None or (args.command == "demo" and name == "out") or (name in _STDOUT_OPTIONS and path == STDOUT):
            continue
        check_write_path(path)
        if os.path.isfile(path):
            for other, source in inputs + written:
                if os.path.samefile(path, source):
                    raise WritePathError(f"--{name} {path}: it is the --{other.replace('_', '-')} file this command "
                                         f"{'reads' if (other, source) in inputs else 'also writes'}; writing it "
                                         f"would replace it: give another path")
        written.append((name, path))
        for other, source in written[:-1]:  # outputs that do not exist yet, named twice (through links too)
            if not os.path.exists(path) and os.path.realpath(path) == os.path.realpath(source):
                raise WritePathError(f"--{name} {path}: it is the --{other} file this command also writes; give "
                                     f"another path")
    return made


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import LLSHError

    made: List[str] = []
    global _real_stdout
    to_stdout = any(getattr(args, n, None) == STDOUT for n in _STDOUT_OPTIONS)  # one such option per command
    try:
        made = _check_outputs(args)
        with contextlib.ExitStack() as stack:
            if to_stdout:  # stdout carries the file alone (for a pipe); the command's own lines go to stderr
                _real_stdout = sys.stdout
                stack.callback(lambda: globals().update(_real_stdout=None))
                stack.enter_context(contextlib.redirect_stdout(sys.stderr))
            status = args.fn(args)
        made = [] if status == 0 else made
        return status
    except (LLSHError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback (outputs are written atomically: none is partial)
        print(f"interrupted: llsh-index {args.command} stopped; nothing was written that was not complete",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly, as a Unix filter does
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not raise again
        except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
            pass
        return 141  # 128 + SIGPIPE, a shell's status for a filter cut off by `head`
    finally:
        for folder in made:  # the folders this call made for a command that then failed: not left behind
            try:
                os.rmdir(folder)  # only if still empty; its parent then only if that one is
            except OSError:
                break


if __name__ == "__main__":
    sys.exit(main())
