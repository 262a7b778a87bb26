"""Pre-extracted per-video feature arrays (I3D, SlowFast, CLIP, ...) into a feature file.

Much of this field's work starts from features someone else extracted: one ``.npy`` per video,
(n_snippets, dim), or (n_snippets, n_crops, dim) for ten-crop features such as the I3D features
published for ShanghaiTech and UCF-Crime, each snippet covering ``snippet_frames`` consecutive
frames (16 for I3D).  :func:`import_feature_arrays` turns such a folder, and optionally a frame-label
``.npz`` (the format of ``../shared/data/vad_groundtruth``), into the package's feature file, which
``llsh-index fit | build | score | evaluate | plot`` read:

    from llsh_index.feature_arrays import import_feature_arrays
    import_feature_arrays("i3d/test", "test.npz", labels="ST_gt.npz", snippet_frames=16, suffix="_i3d")

    llsh-index import --folder i3d/test --labels ST_gt.npz --snippet-frames 16 --suffix _i3d --out test.npz

Alignment: snippet i of a video covers frames [N i, N i + N) and is aligned to its middle frame
N i + N // 2 (the last frame of the video if that lies beyond it); `score` then gives each frame the
linear interpolation of its two nearest snippets' scores (frames after the last snippet's middle
take its score, so features that drop a last partial chunk still cover the video).  With labels,
a video has len(labels) frames, and features that cannot be those frames' snippets (a snippet
starting after the last frame, or a whole snippet's worth of frames, N or more, left uncovered: a
wrong ``snippet_frames``) are refused.  Without ``snippet_frames`` every snippet is one frame.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np

from .errors import ConfigError, InvalidInputError
from .video import FeatureFile, load_feature_file, save_features

PathLike = Union[str, os.PathLike]
_MAX_FRAMES = np.iinfo(np.int32).max  # frame indexes are stored as int32

__all__ = ["import_feature_arrays", "snippet_frame_index"]


def snippet_frame_index(n_snippets: int, snippet_frames: int, n_frames: int, name: str = "") -> np.ndarray:
    """The frame each of ``n_snippets`` consecutive snippets of ``snippet_frames`` frames is aligned
    to (its middle frame, at most the video's last), checked against a video of ``n_frames``."""
    what = f"video {name!r}: " if name else ""
    if max(n_frames, snippet_frames * n_snippets) > _MAX_FRAMES:
        raise InvalidInputError(f"{what}{n_snippets} snippets of {snippet_frames} frames in a video of {n_frames} "
                                f"frames: expected at most {_MAX_FRAMES} frames (the frame index is int32)")
    starts = snippet_frames * np.arange(n_snippets, dtype=np.int64)
    if n_snippets and starts[-1] >= n_frames:
        raise InvalidInputError(f"{what}{n_snippets} snippets of {snippet_frames} frames start up to frame "
                                f"{starts[-1]}, but the video has {n_frames} frames: expected at most "
                                f"{-(-n_frames // snippet_frames)} snippets (another snippet_frames?)")
    if n_frames - snippet_frames * n_snippets >= snippet_frames:
        raise InvalidInputError(f"{what}{n_snippets} snippets of {snippet_frames} frames cover {snippet_frames * n_snippets} "
                                f"of the video's {n_frames} frames: expected at least {n_frames // snippet_frames} "
                                f"snippets (another snippet_frames?)")
    return np.minimum(starts + snippet_frames // 2, n_frames - 1).astype(np.int32)


def _read_array(path: str, crops: Union[str, int]) -> Tuple[np.ndarray, bool]:
    """(float32 (n_snippets, dim) features, whether the file held crops that `crops` reduced)."""
    try:
        a = np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as exc:  # pickled object arrays, damaged headers (ValueError, TokenError...), truncated files
        raise InvalidInputError(f"{path}: not a readable .npy array ({type(exc).__name__}: {exc})") from exc
    if not isinstance(a, np.ndarray):
        raise InvalidInputError(f"{path}: expected a .npy array, got {type(a).__name__}")
    if a.dtype.kind not in "fiu":
        raise InvalidInputError(f"{path}: expected numeric features, got dtype {a.dtype}")
    cropped = a.ndim == 3
    if cropped:  # (n_snippets, n_crops, dim)
        if a.shape[1] == 0:
            raise InvalidInputError(f"{path}: expected at least one crop, got shape {a.shape}")
        if crops == "mean":
            a = a.astype(np.float64).mean(axis=1)
        elif crops >= a.shape[1]:
            raise ConfigError(f"crops: {path} has {a.shape[1]} crops (shape {a.shape}), got crop index {crops}")
        else:
            a = a[:, crops]
    elif a.ndim != 2:
        raise InvalidInputError(f"{path}: expected (n_snippets, dim) or (n_snippets, n_crops, dim) features, "
                                f"got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InvalidInputError(f"{path}: expected at least one snippet of at least one feature, got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        raise InvalidInputError(f"{path}: expected finite features, got NaN or Inf "
                                f"(in {int(bad.any(axis=1).sum())} snippets)")
    peak, limit = float(np.abs(a).max()), float(np.finfo(np.float32).max)
    if peak > limit:
        raise InvalidInputError(f"{path}: expected values within float32's range ({limit:.6g}), got {peak:.3g}")
    return np.asarray(a, dtype=np.float32), cropped


def import_feature_arrays(folder: PathLike, out: Optional[PathLike] = None, *,
                          labels: Union[None, PathLike, Mapping[str, np.ndarray]] = None,
                          snippet_frames: Optional[int] = None, crops: Union[str, int] = "mean", suffix: str = "",
                          dtype: str = "float32", progress: bool = True) -> FeatureFile:
    """Reads ``folder/<video><suffix>.npy`` for every such file (video names sorted) and returns
    them as a :class:`~llsh_index.video.FeatureFile`, written to ``out`` first when it is given.

    crops: for (n_snippets, n_crops, dim) arrays, "mean" (the mean over the crops) or the index of
    one crop.  labels: a label ``.npz`` path or a mapping video -> per-frame 0/1; videos of the
    folder without labels get none (e.g. training videos), labels of videos not in the folder are
    left out.  snippet_frames: frames per snippet (the module's alignment); None: one snippet per
    frame.  dtype: "float32" or "float16" in the file.
    """
    from . import metrics

    if isinstance(crops, (bool, np.bool_)) or not (crops == "mean" if isinstance(crops, str)
                                                   else isinstance(crops, (int, np.integer)) and crops >= 0):
        raise ConfigError(f"crops: expected 'mean' or a crop index >= 0, got {crops!r}")
    if snippet_frames is not None and (isinstance(snippet_frames, (bool, np.bool_))
                                       or not isinstance(snippet_frames, (int, np.integer))
                                       or not 1 <= snippet_frames <= _MAX_FRAMES):
        raise ConfigError(f"snippet_frames: expected an integer in [1, {_MAX_FRAMES}] or None, got {snippet_frames!r}")
    if not isinstance(suffix, str):
        raise ConfigError(f"suffix: expected a string, got {type(suffix).__name__}")
    if not isinstance(folder, (str, os.PathLike)) or isinstance(os.fspath(folder), bytes):
        raise ConfigError(f"folder: expected a str or os.PathLike path, got {type(folder).__name__}")
    if labels is not None and not isinstance(labels, (str, os.PathLike, Mapping)):
        raise ConfigError(f"labels: expected None, a label .npz path or a mapping video -> per-frame 0/1, "
                          f"got {type(labels).__name__}")
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):  # "not found" would send the user looking for it
        raise InvalidInputError(f"{folder}: expected a folder of per-video .npy arrays, got a file")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"feature folder not found: {folder}")
    ending = f"{suffix}.npy"
    try:
        files = sorted(f for f in os.listdir(folder) if f.endswith(ending) and len(f) > len(ending))
    except OSError as exc:  # a folder this process may not list
        raise InvalidInputError(f"{folder}: cannot list the feature folder ({type(exc).__name__}: {exc})") from exc
    # a broken link, a folder or a device named like a video is a missing video, not one to pass over
    odd = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if odd:
        raise InvalidInputError(f"{folder}: expected regular files, got {len(odd)} entries named like videos that "
                                f"are not ({', '.join(odd[:5])}{', ...' if len(odd) > 5 else ''}: broken links, "
                                f"folders or devices)")
    if not files:
        raise InvalidInputError(f"{folder}: expected files named <video>{ending}, found none")
    if labels is None:
        label_map: Dict[str, np.ndarray] = {}
    elif isinstance(labels, Mapping):
        label_map = {str(k): metrics.check_frame_labels(v, f"labels[{k!r}]") for k, v in labels.items()}
    else:
        label_map = metrics.load_labels(labels)
    names = [f[: -len(ending)] for f in files]
    if label_map and not set(label_map) & set(names):
        raise InvalidInputError(f"labels: expected labels of some of the {len(names)} videos of {folder} "
                                f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}), got labels of "
                                f"{len(label_map)} others ({', '.join(sorted(label_map)[:3])}, ...): another suffix?")

    from tqdm.auto import tqdm

    features, frame_index, n_frames, kept, any_crops = {}, {}, {}, {}, False
    for f, name in tqdm(list(zip(files, names)), desc="import", unit="video", disable=not progress):
        x, cropped = _read_array(os.path.join(folder, f), crops)
        any_crops = any_crops or cropped
        features[name] = x
        lab = label_map.get(name)
        if lab is not None:
            kept[name] = lab
            n_frames[name] = int(np.asarray(lab).size)
        if snippet_frames is not None:
            n = n_frames.setdefault(name, int(snippet_frames) * len(x))
            frame_index[name] = snippet_frame_index(len(x), int(snippet_frames), n, name)
    meta = {"source": "import_feature_arrays", "folder": os.path.abspath(folder), "suffix": suffix,
            # part of the recorded feature space: only where some file had crops for it to choose among
            "crops": (crops if isinstance(crops, str) else int(crops)) if any_crops else None,
            "snippet_frames": None if snippet_frames is None else int(snippet_frames),
            "videos_without_labels": sorted(set(features) - set(kept)) if label_map else None,
            "labels_left_out": len(set(label_map) - set(features))}
    kwargs = dict(labels_by_video=kept or None, frame_index_by_video=frame_index or None,
                  n_frames_by_video=n_frames or None, dtype=dtype)
    if out is not None:
        save_features(out, features, meta, **kwargs)
        return load_feature_file(out)
    # the same checks and the same object as a written file, without writing one
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "features.npz")
        save_features(path, features, meta, **kwargs)
        return load_feature_file(path)
