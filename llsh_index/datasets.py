"""Loaders for the standard video-anomaly-detection dataset layouts.

Every loader returns a :class:`VideoDataset`: an ordered list of :class:`Video` entries
(name, frame paths or a video file, per-frame 0/1 labels or ``None``).  Nothing is decoded
here; :mod:`llsh_index.video` reads the frames and extracts features.

Supported layouts (``split`` is ``"training"``/``"train"`` or ``"testing"``/``"test"``):

UCSD Ped2 (:func:`load_ped2`)::

    ped2/training/frames/01/000.jpg ...      16 normal videos
    ped2/testing/frames/01/000.jpg ...       12 test videos
    ped2/ped2.mat                            scipy.io.loadmat(...)["gt"]: (1, n_videos) cells,
                                             each a 2 x k array of [first; last] anomalous frame
                                             ranges, 1-based and inclusive

    (the original UCSD release, UCSDped2/Train/Train001/001.tif and UCSDped2/Test/Test001/...,
    is read too; its ``*_gt`` mask folders are skipped; labels then come from ``mat_path``)

CUHK Avenue (:func:`load_avenue`) and ShanghaiTech Campus (:func:`load_shanghaitech`)::

    root/training/frames/<video>/*.jpg       (or root/training/videos/<video>.avi|.mp4|...;
    root/testing/frames/<video>/*.jpg         Avenue's release: root/testing_videos/01.avi ...)
    labels: an .npz file whose keys are the test video names and whose values are the
            per-frame 0/1 labels (the layout of the LLSH paper's ``Avenue_gt.npz`` / ``ST_gt.npz``)

IITB Corridor (:func:`load_corridor`): as Avenue, or the original release::

    root/Train/000001/000001.avi ...         208 normal videos (named "1" ...)
    root/Test/000209/000209.avi ...          150 test videos ("209" ...), labels: Corridor_gt.npz
                                             (each video's black first frame is skipped)

Frames inside a folder are sorted naturally (``2.jpg`` before ``10.jpg``).  Missing folders or
files raise :class:`DatasetNotFoundError` (a ``FileNotFoundError``) naming the path; labels that
do not fit the frames raise :class:`DatasetFormatError` (a ``ValueError``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

try:  # typed errors of the package when it is importable; plain bases otherwise
    from ._validation import check_bool
    from .errors import NPZ_READ_ERRORS, ConfigError, InvalidDTypeError, LLSHError as _BaseError
except Exception:  # pragma: no cover - only when this file is loaded outside the package
    NPZ_READ_ERRORS = (Exception,)

    class _BaseError(Exception):
        pass

    class ConfigError(_BaseError, ValueError):
        pass

    class InvalidDTypeError(_BaseError, TypeError):
        pass

    def check_bool(value, name: str) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ConfigError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
        return bool(value)

__all__ = [
    "FRAME_EXTENSIONS", "VIDEO_EXTENSIONS", "DatasetError", "DatasetNotFoundError", "DatasetFormatError",
    "VideoNotFoundError",
    "Video", "VideoDataset", "natural_key", "list_frame_files", "load_frame_folders", "load_ped2",
    "load_ped2_labels", "load_avenue", "load_shanghaitech", "load_corridor", "load_npz_labels", "DemoFeatures", "load_ped2_demo",
    "PED2_DEMO_PATH",
]

PathLike = Union[str, os.PathLike]

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".mpg", ".mpeg", ".webm", ".m4v")


class DatasetError(_BaseError):
    """Base class of the dataset-loading errors."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset folder, frame folder, video file or label file is missing (the message names it)."""

    def __init__(self, message: str, path: Optional[PathLike] = None):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.filename = self.path

    def __str__(self) -> str:  # FileNotFoundError would otherwise print "None"
        return str(self.args[0]) if self.args else ""


class DatasetFormatError(DatasetError, ValueError):
    """Labels or folders exist but do not fit (wrong length, values other than 0/1, no frames...)."""


class VideoNotFoundError(DatasetError, KeyError, IndexError):
    """``dataset[name]`` or ``dataset[i]`` names no video of the dataset (a KeyError / IndexError too,
    as a mapping or a list raises)."""

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- helpers

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> Tuple:
    """Sort key that orders embedded numbers numerically: ``frame2.jpg`` < ``frame10.jpg``."""
    name = str(name)
    parts = _DIGITS.split(name)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts) + ((2, 0, name),)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        if path.exists():
            raise DatasetNotFoundError(f"{what} is not a folder: {path}", path)
        raise DatasetNotFoundError(f"{what} not found: {path}", path)
    return path


def _require_file(path: Path, what: str) -> Path:
    from .io import refuse_non_regular

    refuse_non_regular(path, DatasetFormatError, f"a {what} (a regular file)")
    if not path.is_file():
        raise DatasetNotFoundError(f"{what} not found: {path}", path)
    return path


def list_frame_files(folder: PathLike, extensions: Sequence[str] = FRAME_EXTENSIONS) -> List[str]:
    """Image files in ``folder`` (not recursive), sorted naturally.

    Raises DatasetNotFoundError if the folder is missing and DatasetFormatError if it holds no image.
    """
    folder = _require_dir(Path(folder), "frame folder")
    exts = tuple(e.lower() for e in extensions)
    names = [e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(exts)
             and not e.name.startswith(".")]
    if not names:
        raise DatasetFormatError(f"no frames ({'/'.join(exts)}) in folder {folder}")
    names.sort(key=natural_key)
    return [str(folder / n) for n in names]


def _split_name(split: str) -> str:
    s = str(split).lower()
    if s in ("train", "training"):
        return "training"
    if s in ("test", "testing"):
        return "testing"
    raise ConfigError(f"split: expected 'training'/'train' or 'testing'/'test', got {split!r}")


def _as_labels(values, name: str, n_frames: Optional[int], source: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.dtype.kind not in "biuf":
        raise DatasetFormatError(f"labels of video {name!r} in {source}: dtype {arr.dtype} is not numeric")
    if arr.size and not np.isin(arr, (0, 1)).all():
        bad = np.unique(arr[~np.isin(arr, (0, 1))])[:5]
        raise DatasetFormatError(f"labels of video {name!r} in {source}: values other than 0/1 ({bad.tolist()})")
    if n_frames is not None and arr.size != n_frames:
        raise DatasetFormatError(
            f"labels of video {name!r} in {source}: {arr.size} labels for {n_frames} frames")
    return arr.astype(np.uint8)


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class Video:
    """One video: either a frame folder (``frame_paths``) or a video file (``video_path``).

    ``labels`` is a uint8 0/1 array with one entry per frame (1 = anomalous), or None
    (training videos, or test videos loaded without labels).
    """

    name: str
    frame_paths: Tuple[str, ...] = ()
    video_path: Optional[str] = None
    labels: Optional[np.ndarray] = field(default=None, compare=False, repr=False)
    # frames of the source before this one are not part of the video: IITB Corridor's videos
    # open with a black frame that its labels (and the authors' extraction) leave out
    first_frame: int = 0

    def __post_init__(self):
        if isinstance(self.first_frame, (bool, np.bool_)) or not isinstance(self.first_frame, (int, np.integer)) \
                or self.first_frame < 0:
            raise ConfigError(f"Video {self.name!r}: first_frame: expected an int >= 0, got {self.first_frame!r}")
        if self.frame_paths and self.first_frame >= len(self.frame_paths):  # no frame left: an empty video
            raise ConfigError(f"Video {self.name!r}: first_frame: expected an int in [0, {len(self.frame_paths)}) "
                              f"for its {len(self.frame_paths)} frames, got {self.first_frame!r}")

    @property
    def source(self) -> Union[str, Tuple[str, ...]]:
        """What :func:`llsh_index.video.iter_frames` reads: the frame paths, else the video file."""
        return self.frame_paths if self.frame_paths else self.video_path

    @property
    def n_frames(self) -> Optional[int]:
        """Number of frames; for a video file only known from its labels (else None)."""
        if self.frame_paths:
            return max(len(self.frame_paths) - int(self.first_frame), 0)
        return None if self.labels is None else int(self.labels.size)


@dataclass
class VideoDataset:
    """An ordered collection of videos of one split of one dataset."""

    name: str
    split: str
    root: str
    videos: List[Video]

    def __len__(self) -> int:
        return len(self.videos)

    def __iter__(self) -> Iterator[Video]:
        return iter(self.videos)

    def __getitem__(self, key: Union[int, str]) -> Video:
        if isinstance(key, str):
            for v in self.videos:
                if v.name == key:
                    return v
            raise VideoNotFoundError(f"no video named {key!r} in {self.name}/{self.split} (it has "
                                     f"{', '.join(v.name for v in self.videos[:5])}{', ...' if len(self) > 5 else ''})")
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
            raise InvalidDTypeError(f"a video of {self.name}/{self.split}: expected a name (str) or a position (int), "
                                    f"got {type(key).__name__}")
        if not -len(self) <= key < len(self):
            raise VideoNotFoundError(f"video {key} of {self.name}/{self.split}: expected a position in "
                                     f"[{-len(self)}, {len(self)}), the dataset has {len(self)} videos")
        return self.videos[key]

    @property
    def names(self) -> List[str]:
        return [v.name for v in self.videos]

    @property
    def n_frames(self) -> Optional[int]:
        """Total frame count, or None when some video's length is unknown."""
        counts = [v.n_frames for v in self.videos]
        return None if any(c is None for c in counts) else int(sum(counts))

    @property
    def has_labels(self) -> bool:
        return bool(self.videos) and all(v.labels is not None for v in self.videos)

    def labels_by_video(self) -> Dict[str, np.ndarray]:
        """``{video name: per-frame uint8 labels}``; raises DatasetFormatError if any video has none."""
        missing = [v.name for v in self.videos if v.labels is None]
        if missing:
            raise DatasetFormatError(f"{self.name}/{self.split}: no labels for videos {missing[:5]}")
        return {v.name: v.labels for v in self.videos}


# --------------------------------------------------------------------------- generic loaders


def load_npz_labels(path: PathLike) -> Dict[str, np.ndarray]:
    """Reads a label file in the LLSH layout (``np.load``, no pickle): ``{video: uint8 0/1 array}``."""
    path = _require_file(Path(path), "label file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DatasetFormatError(f"cannot read label file {path}: expected an .npz archive, got a single array")
        with z:
            return {k: _as_labels(z[k], k, None, str(path)) for k in z.files}
    except NPZ_READ_ERRORS as e:
        if isinstance(e, _BaseError):  # the package's own (DatasetFormatError of a bad label...)
            raise
        from .io import npz_refusal

        raise DatasetFormatError(f"cannot read label file {path}: {npz_refusal(path, e)}") from e


def load_frame_folders(root: PathLike, labels: Optional[Mapping[str, np.ndarray]] = None, *,
                       name: str = "custom", split: str = "", videos_dirname: Optional[str] = None,
                       require_labels: bool = True, labels_source: str = "labels") -> VideoDataset:
    """One video per sub-folder of ``root`` (frames inside, naturally sorted) and, if
    ``videos_dirname`` is given, one per video file in ``root.parent / videos_dirname`` when
    ``root`` is absent.

    ``labels`` maps video names to per-frame 0/1 labels; each is checked against the frame count.
    With ``require_labels`` a video without labels (or labels without a video) is an error.
    ``labels_source`` names the labels in errors (the label file they came from).
    """
    require_labels = check_bool(require_labels, "require_labels")
    root = Path(root)
    videos: List[Video] = []
    what = " ".join(p for p in (name, split) if p and p != "custom")  # the default name says nothing
    prefix = f"{what}: " if what else ""
    if root.is_dir():
        subdirs = sorted((e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")),
                         key=natural_key)
        for vname in subdirs:
            paths = list_frame_files(root / vname)
            videos.append(Video(vname, tuple(paths), None, None))
        expected = "one folder of frames per video"
    elif videos_dirname is not None and (root.parent / videos_dirname).is_dir():
        vroot = root.parent / videos_dirname
        files = sorted((e.name for e in os.scandir(vroot) if e.is_file() and e.name.lower().endswith(VIDEO_EXTENSIONS)),
                       key=natural_key)
        for fname in files:
            videos.append(Video(os.path.splitext(fname)[0], (), str(vroot / fname), None))
        root = vroot
        expected = f"video files: {', '.join(VIDEO_EXTENSIONS)}"
    else:
        where = f"{root}" + (f" (nor {root.parent / videos_dirname})" if videos_dirname else "")
        raise DatasetNotFoundError(f"{what + ' ' if what else ''}frames folder not found: {where}", root)
    if not videos:
        raise DatasetFormatError(f"{prefix}no videos found in {root} (expected {expected})")
    if labels is not None:
        have = set(labels)
        names = [v.name for v in videos]
        if require_labels:
            no_lab = [n for n in names if n not in have]
            if no_lab:
                raise DatasetFormatError(f"{prefix}no labels for videos {no_lab[:5]} (of {len(no_lab)})")
            extra = sorted(have - set(names), key=natural_key)
            if extra:
                raise DatasetNotFoundError(
                    f"{prefix}labelled videos {extra[:5]} (of {len(extra)}) have no frames under {root}",
                    root / extra[0])
        videos = [Video(v.name, v.frame_paths, v.video_path,
                        None if v.name not in have else _as_labels(labels[v.name], v.name, v.n_frames, labels_source))
                  for v in videos]
    return VideoDataset(name, split, str(root), videos)


# --------------------------------------------------------------------------- UCSD Ped2


def load_ped2_labels(mat_path: PathLike, frame_counts: Sequence[int]) -> List[np.ndarray]:
    """Per-frame labels from a UCSD ``ped1.mat``/``ped2.mat``, in video order: the parser is
    :func:`llsh_index.metrics.load_ped2_labels` (``gt`` holds one 2 x k array of 1-based,
    inclusive ``[first; last]`` ranges per test video); its errors come as DatasetFormatError."""
    mat_path = _require_file(Path(mat_path), "UCSD label file")
    from . import metrics

    try:
        return list(metrics.load_ped2_labels(mat_path, list(frame_counts)).values())
    except (metrics.MetricsError, metrics.MetricsTypeError) as e:
        raise DatasetFormatError(str(e)) from e


def load_ped2(root: PathLike, split: str = "testing", *, mat_path: Optional[PathLike] = None,
              with_labels: bool = True) -> VideoDataset:
    """UCSD Ped2 (also works for Ped1): ``root/{training,testing}/frames/NN/*.jpg`` and
    ``root/ped2.mat`` (or ``mat_path``).  Test videos get labels unless ``with_labels=False``."""
    root = _require_dir(Path(root), "UCSD Ped2 folder")
    split = _split_name(split)
    with_labels = check_bool(with_labels, "with_labels")
    frames_root = root / split / "frames"
    original = root / ("Train" if split == "training" else "Test")
    if not frames_root.is_dir() and original.is_dir():  # original UCSD layout
        videos = []
        for e in sorted(os.scandir(original), key=lambda e: natural_key(e.name)):
            if e.is_dir() and not e.name.startswith(".") and not e.name.endswith("_gt"):
                videos.append(Video(e.name, tuple(list_frame_files(e.path)), None, None))
        if not videos:
            raise DatasetFormatError(f"ped2 {split}: no videos in {original}")
        ds = VideoDataset("ped2", split, str(root), videos)
    else:
        frames_root = _require_dir(frames_root, f"UCSD Ped2 {split} frames folder")
        ds = load_frame_folders(frames_root, None, name="ped2", split=split)
    ds.root = str(root)
    if split == "testing" and with_labels:
        if mat_path is None:
            candidates = [root / "ped2.mat", root / "ped1.mat", root / split / "ped2.mat"]
            found = [c for c in candidates if c.is_file()]
            if not found:
                raise DatasetNotFoundError(f"UCSD Ped2 label file not found: {candidates[0]}", candidates[0])
            mat_path = found[0]
        labs = load_ped2_labels(mat_path, [v.n_frames for v in ds.videos])
        ds.videos = [Video(v.name, v.frame_paths, v.video_path, lab) for v, lab in zip(ds.videos, labs)]
    return ds


# --------------------------------------------------------------------------- Avenue / ShanghaiTech


def _find_label_file(root: Path, names: Sequence[str]) -> Path:
    candidates = [root / n for n in names] + [root / "testing" / n for n in names]
    for c in candidates:
        if c.is_file():
            return c
    raise DatasetNotFoundError(
        f"label file not found (looked for {', '.join(str(c) for c in candidates)}); pass labels_path=...",
        candidates[0])


def _load_npz_dataset(dsname: str, label_names: Sequence[str], root: PathLike, split: str,
                      labels_path: Optional[PathLike], with_labels: bool, release_videos: bool = False) -> VideoDataset:
    root = _require_dir(Path(root), f"{dsname} folder")
    split = _split_name(split)
    with_labels = check_bool(with_labels, "with_labels")
    videos = "videos"
    if not (root / split).is_dir():
        release = root / f"{split}_videos"  # the release's own layout (Avenue: root/training_videos/01.avi)
        if not (release_videos and release.is_dir()):
            alt = f" (nor {release})" if release_videos else ""
            raise DatasetNotFoundError(f"{dsname} {split} folder not found: {root / split}{alt}", root / split)
        videos = os.path.abspath(release)  # an absolute name replaces the frames folder's parent
    labels = None
    if split == "testing" and with_labels:
        path = Path(labels_path) if labels_path is not None else _find_label_file(root, label_names)
        labels = load_npz_labels(path)
    ds = load_frame_folders(root / split / "frames", labels, name=dsname, split=split, videos_dirname=videos,
                            labels_source=str(path) if labels is not None else "labels")
    ds.root = str(root)
    return ds


def load_avenue(root: PathLike, split: str = "testing", *, labels_path: Optional[PathLike] = None,
                with_labels: bool = True) -> VideoDataset:
    """CUHK Avenue: ``root/{training,testing}/frames/<video>/`` (or ``.../videos/<video>.avi``, or
    the release's ``root/{training,testing}_videos/<video>.avi``) and per-frame labels from
    ``labels_path`` (default: ``root/Avenue_gt.npz``)."""
    return _load_npz_dataset("avenue", ("Avenue_gt.npz", "avenue_gt.npz", "gt.npz"), root, split,
                             labels_path, with_labels, release_videos=True)


def load_shanghaitech(root: PathLike, split: str = "testing", *, labels_path: Optional[PathLike] = None,
                      with_labels: bool = True) -> VideoDataset:
    """ShanghaiTech Campus: ``root/{training,testing}/frames/<video>/`` (or ``.../videos/<video>.avi``,
    the original training release) and labels from ``labels_path`` (default: ``root/ST_gt.npz``)."""
    return _load_npz_dataset("shanghaitech", ("ST_gt.npz", "st_gt.npz", "shanghaitech_gt.npz", "gt.npz"), root,
                             split, labels_path, with_labels)


# --------------------------------------------------------------------------- IITB Corridor

_ASCII_NUMBER = re.compile(r"[0-9]+")


def _corridor_name(name: str) -> str:
    # the release numbers its videos 000001 ...; Corridor_gt.npz names them 1 ... (209 ... for test)
    return str(int(name)) if _ASCII_NUMBER.fullmatch(name) else name


def _corridor_release_videos(folder: Path) -> List[Video]:
    """The original release: ``Train/000001/000001.avi`` (a test folder may hold annotations too), or
    its videos moved up a level (``Train/000001.avi``, the authors' ``mvfile_corridor.py``)."""
    flat = sorted((e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(VIDEO_EXTENSIONS)
                   and not e.name.startswith(".")), key=natural_key)
    dirs = sorted((e for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")),
                  key=lambda e: natural_key(e.name))
    if flat and dirs:  # which of the two holds the videos the labels describe is not ours to guess
        raise DatasetFormatError(f"corridor: expected video folders (000209/000209.avi) or video files (000209.avi) "
                                 f"in {folder}, got both: {[d.name for d in dirs[:3]]} and {flat[:3]}")
    if flat:
        return [Video(os.path.splitext(n)[0], (), str(folder / n)) for n in flat]
    videos = []
    for d in dirs:
        files = sorted((e.name for e in os.scandir(d.path) if e.is_file() and e.name.lower().endswith(VIDEO_EXTENSIONS)),
                       key=natural_key)
        if not files:
            raise DatasetFormatError(f"corridor: no video file ({'/'.join(VIDEO_EXTENSIONS)}) in {d.path}")
        # the video is the file named after its folder, else the folder's only one: taking the first
        # of several would index a video the labels do not describe
        own = [n for n in files if os.path.splitext(n)[0] == d.name] if len(files) > 1 else files
        if len(own) != 1:
            raise DatasetFormatError(f"corridor: expected one video file named {d.name}.* (or a single video file) "
                                     f"in {d.path}, got {files[:5]}")
        videos.append(Video(d.name, (), os.path.join(d.path, own[0])))
    if not videos:
        raise DatasetFormatError(f"corridor: no video folders in {folder}")
    return videos


# the mean pixel value (of 255) below which a frame is the black frame that opens a Corridor video
_BLACK_MEAN = 16.0


def _first_frame_mean(paths: Sequence[str]) -> float:
    from .video import _read_image  # imported here: video imports this module

    return float(_read_image(paths[0]).mean())


def _check_black_first_frame(split: str, name: str, paths: Sequence[str], n_labels: int, source: str) -> None:
    mean = _first_frame_mean(paths)
    if mean >= _BLACK_MEAN:
        raise DatasetFormatError(
            f"corridor {split}: video {name!r} has {len(paths)} frames for {n_labels} labels in {source}, but its "
            f"first frame {paths[0]} is not black (mean {mean:.0f} of 255), so it is not the frame the labels leave "
            f"out; pass skip_first_frame=True to skip it anyway (or False to keep it)")


def load_corridor(root: PathLike, split: str = "testing", *, labels_path: Optional[PathLike] = None,
                  with_labels: bool = True, skip_first_frame: Optional[bool] = None) -> VideoDataset:
    """IITB Corridor, in either layout:

    - extracted frames, as for Avenue: ``root/{training,testing}/frames/<video>/*.jpg`` (or
      ``.../videos/<video>.avi``);
    - the original release: ``root/{Train,Test}/000209/000209.avi``, or with the videos moved up
      a level (``root/Test/000209.avi``, as the authors' ``mvfile_corridor.py`` leaves them).

    Videos are named by their number without leading zeros (``000209`` -> ``"209"``), as in the
    labels of ``labels_path`` (default: ``root/Corridor_gt.npz``, the LLSH paper's file).

    Every Corridor video opens with a black frame that the labels leave out (the authors extract
    frames with ``--skip_first``). ``skip_first_frame=None`` (default) skips it in video files; in
    a labelled frame folder that holds one frame more than its labels, when that first frame is
    black (DatasetFormatError when it is not); and in a folder without labels (training), when its
    first frame is black (mean below 16 of 255). ``True`` / ``False`` skip it everywhere / nowhere.
    """
    if skip_first_frame is not None and not isinstance(skip_first_frame, (bool, np.bool_)):  # bool("no") is True
        raise ConfigError(f"skip_first_frame: expected None, True or False, got {type(skip_first_frame).__name__} "
                          f"{skip_first_frame!r}")
    root = _require_dir(Path(root), "IITB Corridor folder")
    split = _split_name(split)
    with_labels = check_bool(with_labels, "with_labels")
    release = root / {"training": "Train", "testing": "Test"}[split]
    if (root / split).is_dir():
        ds = load_frame_folders(root / split / "frames", None, name="corridor", split=split, videos_dirname="videos")
    elif release.is_dir():
        ds = VideoDataset("corridor", split, str(release), _corridor_release_videos(release))
    else:
        raise DatasetNotFoundError(f"corridor {split} folder not found: {root / split} (nor {release})", root / split)
    labels = None
    if split == "testing" and with_labels:
        path = Path(labels_path) if labels_path is not None else _find_label_file(
            root, ("Corridor_gt.npz", "corridor_gt.npz", "gt.npz"))
        raw = load_npz_labels(path)
        labels = {_corridor_name(k): v for k, v in raw.items()}
        source = str(path)
        if len(labels) < len(raw):  # '209' and '0209' name one video: one of them would be dropped
            twice = sorted((k for k in raw if sum(_corridor_name(o) == _corridor_name(k) for o in raw) > 1),
                           key=natural_key)
            raise DatasetFormatError(f"corridor {split}: label keys {twice[:6]} in {source} name the same videos")
    names = [_corridor_name(v.name) for v in ds.videos]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1}, key=natural_key)
        raise DatasetFormatError(f"corridor {split}: two videos are numbered {twice[:5]} under {ds.root}")
    if labels is not None:
        no_lab = [n for n in names if n not in labels]
        if no_lab:
            raise DatasetFormatError(f"corridor {split}: no labels for videos {no_lab[:5]} (of {len(no_lab)}) in {source}")
        extra = sorted(set(labels) - set(names), key=natural_key)
        if extra:
            raise DatasetNotFoundError(f"corridor {split}: labelled videos {extra[:5]} (of {len(extra)}) have no "
                                       f"frames under {ds.root}", Path(ds.root) / extra[0])
    videos = []
    for v, name in zip(ds.videos, names):
        lab = None if labels is None else labels[name]
        if skip_first_frame is not None:
            first = int(bool(skip_first_frame))
        elif v.frame_paths and lab is None:  # no count to compare: a black opening frame is Corridor's
            first = int(len(v.frame_paths) > 1 and _first_frame_mean(v.frame_paths) < _BLACK_MEAN)
        elif v.frame_paths:
            first = int(len(v.frame_paths) == lab.size + 1)
            if first:  # any other frame too many would shift every label by one
                _check_black_first_frame(split, name, v.frame_paths, lab.size, source)
        else:
            first = 1
        n = len(v.frame_paths) - first if v.frame_paths else None
        videos.append(Video(name, v.frame_paths, v.video_path,
                            None if lab is None else _as_labels(lab, name, n, source), first))
    ds.videos = videos
    ds.root = str(root)
    return ds


# --------------------------------------------------------------------------- bundled demo features

PED2_DEMO_PATH = Path(__file__).resolve().parent / "data" / "ped2_demo.npz"


@dataclass
class DemoFeatures:
    """Precomputed UCSD Ped2 snippet features shipped with the package (see ``load_ped2_demo``).

    ``train`` / ``test``: ``{video: (n_snippets, dim) float32}``; ``test_labels``: per-frame uint8
    labels of the test videos; ``frame_index``: for every video, the frame each snippet is
    aligned to (test: one snippet per frame, ``arange(n_frames)``; train: every
    ``meta["train_snippet_stride"]``-th frame); ``meta``: extractor, T, s, how it was made.
    """

    train: Dict[str, np.ndarray]
    test: Dict[str, np.ndarray]
    test_labels: Dict[str, np.ndarray]
    frame_index: Dict[str, Dict[str, np.ndarray]]
    meta: Dict

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])


def load_ped2_demo(path: Optional[PathLike] = None) -> DemoFeatures:
    """Loads the bundled Ped2 demo features (``llsh_index/data/ped2_demo.npz``, regenerated by
    ``scripts/make_demo_features.py``); needs neither the frames nor torch."""
    from .video import load_feature_file  # lazy: video imports this module

    path = Path(path) if path is not None else PED2_DEMO_PATH
    ff = load_feature_file(_require_file(path, "Ped2 demo feature file"))
    out: Dict[str, Dict[str, np.ndarray]] = {"train": {}, "test": {}}
    fidx: Dict[str, Dict[str, np.ndarray]] = {"train": {}, "test": {}}
    if not any(key.startswith(("train/", "test/")) for key in ff.features):  # one split's videos
        raise DatasetFormatError(f"{path}: a feature file of plain videos ({', '.join(list(ff.features)[:3])}"
                                 f"{', ...' if len(ff.features) > 3 else ''}), as `llsh-index extract` writes, not "
                                 f"a demo features file: that holds both splits, its videos named 'train/<video>' "
                                 f"and 'test/<video>' (labelled), as scripts/make_demo_features.py writes")
    for key, f in ff.features.items():
        split, _, name = key.partition("/")
        if split not in out or not name:
            raise DatasetFormatError(f"{path}: unexpected entry {key!r} (expected 'train/<video>' or 'test/<video>')")
        out[split][name] = f
        if key in ff.frame_index:
            fidx[split][name] = ff.frame_index[key]
    labels = {k.partition("/")[2]: v for k, v in (ff.labels or {}).items() if k.startswith("test/")}
    if set(labels) != set(out["test"]):
        raise DatasetFormatError(f"{path}: test labels do not match the test videos")
    return DemoFeatures(out["train"], out["test"], labels, fidx, ff.meta)
