"""ShanghaiTech-shaped synthetic snippet features, streamed to disk (for benchmarks and tests).

The generator reproduces the *structure* of the paper's ShanghaiTech (ST) setting, not its
pixels: the real test-set label layout (video names, lengths and anomalous frame ranges of
``ST_gt.npz``), 330 training videos holding ``scale * 792,855`` snippets (the paper's
SlowFast training-set size), and temporally smooth features.

Feature model (per snippet; ``d`` = ``dim``; every scale below is a per-coordinate standard
deviation, so norms grow like ``sqrt(d)``)::

    x(t) = mu + mu_scene + A_scene z(t) + e(t)            normal snippet
    z(t)  : k = latent_shared + latent_scene latent factors, each an AR(1) (discrete
            Ornstein-Uhlenbeck) process with unit stationary variance and a time constant
            drawn log-uniformly in tau_range snippets: a smooth trajectory per video
    A_scene = [G | S_scene]: loadings shared by all scenes (G) and scene-specific (S_scene),
            scaled to a per-coordinate signal sd of signal_scale; the normal data of a scene
            lives near a k-dimensional affine subspace
    e(t)  : small noise, AR(1) in time with coefficient noise_ar (consecutive snippets share
            most of their frames), per-scene level noise * U(0.8, 1.2)

The scene offset (scene_scale) dominates the within-scene variation (signal_scale, noise), as in
pooled deep features of a fixed camera: consecutive snippets have a cosine similarity of about
0.996, two random training snippets about 0.5 (d = 512, defaults).

Test videos (the layout of the given labels; snippet ``j`` of a video of ``F`` frames covers
frames ``j .. j + snippet_span`` and its label is the one of frame ``j + snippet_span // 2 + 1``,
exactly where :func:`llsh_index.metrics.snippet_to_frame_scores` puts its score):

* every snippet gets a normal trajectory drawn as above (same scene model as training);
* each maximal run of anomalous snippets is one *event*: the features are displaced, with a
  smooth ramp in and out and a slowly wandering intensity, by ``cos(theta) * a * S`` along a
  random direction orthogonal to the scene's normal subspace ("new appearance") plus a latent
  shift of ``sin(theta) * s`` stationary standard deviations inside the subspace ("unusual
  motion": a low-density region of the normal manifold).  ``S`` is the within-scene spread
  norm ``sqrt(signal_scale^2 + noise^2) * sqrt(d)``; ``a`` is log-normal (median
  ``anomaly_median``, log-sd ``anomaly_spread``), ``s`` uniform in ``latent_shift``, ``theta``
  uniform in [0, pi/2];
* with probability ``nuisance_prob`` a test video also gets one *normal* nuisance segment
  (lighting / camera change never seen in training): an off-subspace displacement of median
  ``nuisance_median * S`` on normal frames.  It costs every detector false positives.

Calibration (done once, then frozen): ``anomaly_median`` / ``nuisance_median`` were set so that
the exhaustive cosine KNN baseline (k = 1024) lands at a realistic macro-AUC ~0.80 / micro-AUC
~0.76 (scale 0.02, a third of the test videos); no other method's result was used.  An earlier
draft had per-snippet noise as large as the trajectory; there nearly every training snippet
fell in a bucket of its own (32-bit keys), far from the large buckets that the paper's 0.26 %
multiplication ratio implies for real features, so the noise was lowered before the frozen
calibration.

Everything is written into ``.npy`` memmaps one video at a time: at no point is an ``N x d``
array held in memory.  Output: a *feature bundle* directory (see :class:`FeatureBundle`)::

    train_features.npy      (N, d) float32, training videos concatenated in time order
    train_video_ids.npy     (N,)   int32, training video of every row
    test_features.npy       (M, d) float32, test videos concatenated
    test_snippet_labels.npy (M,)   uint8, label of every test snippet (synthetic data only)
    labels.npz              frame labels of the test videos (name -> uint8 per frame)
    manifest.json           format, dims, per-video [name, start, count(, n_frames)], config

Generation is deterministic given the configuration (seed included): every video draws from
its own ``numpy.random.SeedSequence`` child, so chunking does not change the bytes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._validation import check_int_range
from .errors import ConfigError, IndexFormatError, InvalidInputError, WritePathError

__all__ = [
    "ST_TRAIN_SNIPPETS", "ST_TRAIN_VIDEOS", "ST_TRAIN_FRAMES", "BUNDLE_FORMAT", "SyntheticConfig",
    "FeatureBundle", "default_st_labels_path", "load_st_layout", "snippet_labels", "generate",
    "open_bundle", "write_bundle_manifest",
]

#: Training-set size of the paper's ShanghaiTech SlowFast features (snippets), the scale-1 N.
ST_TRAIN_SNIPPETS = 792_855
#: ShanghaiTech Campus training videos / frames (the public dataset).
ST_TRAIN_VIDEOS = 330
ST_TRAIN_FRAMES = 274_515

BUNDLE_FORMAT = "llsh_index.feature_bundle"
BUNDLE_VERSION = 1


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of :func:`generate` (see the module docstring for the model)."""

    scale: float = 0.1                 # fraction of ST_TRAIN_SNIPPETS in the training set
    dim: int = 512
    n_train_videos: int = ST_TRAIN_VIDEOS
    snippet_span: int = 15             # a snippet covers snippet_span + 1 frames
    seed: int = 0
    latent_shared: int = 16
    latent_scene: int = 8
    tau_range: Tuple[float, float] = (15.0, 150.0)
    mean_scale: float = 1.0
    scene_scale: float = 1.0
    signal_scale: float = 0.4
    noise: float = 0.15
    noise_ar: float = 0.8
    anomaly_median: float = 0.8        # off-subspace displacement, in units of the within-scene spread norm
    anomaly_spread: float = 0.6        # log-sd of that displacement
    latent_shift: Tuple[float, float] = (2.0, 4.0)
    nuisance_prob: float = 0.5
    nuisance_median: float = 0.4
    n_train_scenes: int = 13
    test_videos: Optional[Tuple[str, ...]] = None  # subset of the label layout (None = all)

    def __post_init__(self):
        def number(name, low, high=math.inf, low_open=False, high_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) \
                    or (v <= low if low_open else v < low) or (v >= high if high_open else v > high):
                rng = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or high == math.inf else ']'}"
                raise ConfigError(f"{name}: expected a finite number in {rng}, got {v!r}")

        for name in ("dim", "n_train_videos", "latent_shared", "n_train_scenes"):
            check_int_range(getattr(self, name), name, 1)
        for name in ("latent_scene", "snippet_span", "seed"):
            check_int_range(getattr(self, name), name, 0)
        number("scale", 0, low_open=True)
        for name in ("mean_scale", "scene_scale", "signal_scale", "noise", "anomaly_spread"):
            number(name, 0)
        number("noise_ar", 0, 1, high_open=True)  # an AR(1) coefficient: stationary below 1
        number("nuisance_prob", 0, 1)
        for name in ("anomaly_median", "nuisance_median"):  # medians of log-normal amplitudes
            number(name, 0, low_open=True)
        for name, positive in (("tau_range", True), ("latent_shift", False)):
            pair = getattr(self, name)
            ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
                not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)
                for v in pair)
            if not ok or pair[0] > pair[1] or (positive and pair[0] <= 0):
                raise ConfigError(f"{name}: expected two finite numbers low <= high{' > 0' if positive else ''}, "
                                  f"got {pair!r}")
        if self.test_videos is not None and (isinstance(self.test_videos, (str, bytes)) or not all(
                isinstance(v, str) for v in self.test_videos) or not len(self.test_videos)):
            raise ConfigError(f"test_videos: expected None or a non-empty tuple of video names, got "
                              f"{self.test_videos!r}")
        if self.latent_shared + self.latent_scene >= self.dim:
            raise ConfigError(f"latent_shared + latent_scene ({self.latent_shared + self.latent_scene}) must be "
                              f"smaller than dim ({self.dim})")

    @property
    def n_train(self) -> int:
        return max(2 * self.n_train_videos, int(round(self.scale * ST_TRAIN_SNIPPETS)))

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["tau_range"] = list(self.tau_range)
        d["latent_shift"] = list(self.latent_shift)
        d["test_videos"] = None if self.test_videos is None else list(self.test_videos)
        return d


# --------------------------------------------------------------------------- labels


def default_st_labels_path() -> str:
    """``<checkout>/../shared/data/vad_groundtruth/ST_gt.npz`` (may not exist)."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.environ.get("LLSH_SHARED_DATA", os.path.join(here, "..", "..", "shared", "data"))
    return os.path.normpath(os.path.join(root, "vad_groundtruth", "ST_gt.npz"))


def load_st_layout(path: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Frame labels of the 107 ShanghaiTech test videos (``ST_gt.npz``), name -> uint8."""
    from .metrics import load_labels

    path = path or default_st_labels_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"ShanghaiTech label file not found at {path} (it lives in ../shared/data on "
                                "development machines; pass labels=... to use another layout)")
    return load_labels(path)


def snippet_labels(frame_labels: np.ndarray, snippet_span: int) -> np.ndarray:
    """Label of every snippet: the frame where metrics' centred placement puts its score.

    ``n = F - snippet_span`` snippets; snippet ``j`` -> frame ``j + snippet_span // 2 + 1``
    (``snippet_span = 0``: one snippet per frame, unchanged).
    """
    f = np.asarray(frame_labels)
    if snippet_span == 0:
        return f.astype(np.uint8)
    n = f.size - snippet_span
    if n < 1:
        raise ValueError(f"a video of {f.size} frames has no snippet of span {snippet_span}")
    off = snippet_span // 2 + 1
    return f[off:off + n].astype(np.uint8)


def _scene_of(name: str) -> str:
    return name.split("_")[0] if "_" in name else "00"


def _runs(mask: np.ndarray) -> List[Tuple[int, int]]:
    """[start, stop) of every maximal run of True."""
    m = np.concatenate([[0], mask.astype(np.int8), [0]])
    d = np.diff(m)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


# --------------------------------------------------------------------------- bundle


@dataclass
class FeatureBundle:
    """A feature bundle directory opened read-only (features as memmaps)."""

    root: str
    manifest: dict
    train: np.ndarray                    # (N, d) memmap
    train_video_ids: np.ndarray          # (N,) int
    test: np.ndarray                     # (M, d) memmap
    labels: Dict[str, np.ndarray]        # frame labels per test video
    test_videos: List[dict] = field(default_factory=list)   # name, start, count (rows of test)

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    @property
    def n_train(self) -> int:
        return int(self.train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test.shape[0])

    def split_scores(self, scores: np.ndarray) -> Dict[str, np.ndarray]:
        """(M,) scores of the concatenated test rows -> {video name: its snippet scores}."""
        scores = np.asarray(scores)
        if scores.shape != (self.n_test,):
            raise ValueError(f"expected {self.n_test} scores, got shape {scores.shape}")
        return {v["name"]: scores[v["start"]:v["start"] + v["count"]] for v in self.test_videos}


def write_bundle_manifest(root: str, *, dim: int, train_videos: Sequence[dict], test_videos: Sequence[dict],
                          source: str, config: Optional[dict] = None) -> dict:
    manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "dim": int(dim), "source": source,
                "n_train": int(sum(v["count"] for v in train_videos)),
                "n_test": int(sum(v["count"] for v in test_videos)),
                "train_videos": list(train_videos), "test_videos": list(test_videos), "config": config}
    tmp = os.path.join(root, "manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(root, "manifest.json"))
    return manifest


def open_bundle(root: str) -> FeatureBundle:
    """Opens a bundle written by :func:`generate` (or by the benchmark's per-video converter)."""
    mpath = os.path.join(root, "manifest.json")
    if not os.path.exists(mpath):
        raise FileNotFoundError(f"{root}: no manifest.json (not a feature bundle, or an unfinished one)")
    try:
        with open(mpath) as f:
            manifest = json.load(f)
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise IndexFormatError(f"{mpath}: expected format {BUNDLE_FORMAT!r}, got {got!r}")
        if manifest.get("version") != BUNDLE_VERSION:
            raise IndexFormatError(f"{mpath}: expected version {BUNDLE_VERSION}, got {manifest.get('version')!r}")
        train = np.load(os.path.join(root, "train_features.npy"), mmap_mode="r")
        test = np.load(os.path.join(root, "test_features.npy"), mmap_mode="r")
        vids = np.load(os.path.join(root, "train_video_ids.npy"))
        with np.load(os.path.join(root, "labels.npz")) as z:
            labels = {k: np.asarray(z[k]).astype(np.uint8) for k in sorted(z.files)}
        dim, n_train, n_test, videos = manifest["dim"], manifest["n_train"], manifest["n_test"], manifest["test_videos"]
        if train.dtype.kind != "f" or test.dtype.kind != "f":
            raise IndexFormatError(f"{root}: expected float features, got {train.dtype} / {test.dtype}")
        if train.ndim != 2 or test.ndim != 2 or train.shape[1] != dim or test.shape[1] != dim:
            raise IndexFormatError(f"{root}: feature shapes {train.shape} / {test.shape} do not match dim {dim}")
        if train.shape[0] != n_train or test.shape[0] != n_test or vids.shape != (train.shape[0],):
            raise IndexFormatError(f"{root}: row counts do not match the manifest")
        start = 0
        for v in videos:  # contiguous ranges covering the test rows: split_scores relies on it
            if v["start"] != start or v["count"] < 0:
                raise IndexFormatError(f"{root}: test video {v.get('name')!r} starts at {v['start']}, expected {start}")
            start += v["count"]
        if start != n_test:
            raise IndexFormatError(f"{root}: the test videos cover {start} rows, the manifest says {n_test}")
    except IndexFormatError:
        raise
    except FileNotFoundError as exc:
        raise IndexFormatError(f"{root}: incomplete bundle ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - JSON, numpy and zip errors of a damaged bundle
        raise IndexFormatError(f"{root}: damaged feature bundle ({type(exc).__name__}: {exc})") from exc
    return FeatureBundle(root=root, manifest=manifest, train=train, train_video_ids=vids, test=test,
                         labels=labels, test_videos=videos)


# --------------------------------------------------------------------------- generator


class _SceneModel:
    def __init__(self, rng: np.random.Generator, cfg: SyntheticConfig, mu: np.ndarray, shared: np.ndarray):
        d = cfg.dim
        k = cfg.latent_shared + cfg.latent_scene
        self.mu = (mu + cfg.scene_scale * rng.standard_normal(d)).astype(np.float32)
        own = rng.standard_normal((d, cfg.latent_scene)) if cfg.latent_scene else np.zeros((d, 0))
        # loadings: per-coordinate signal variance = signal_scale^2 for unit-variance factors
        a = np.concatenate([shared, own], axis=1) * (cfg.signal_scale / math.sqrt(k))
        self.A = a.astype(np.float32)                          # (d, k)
        q, _ = np.linalg.qr(a)
        self.basis = q                                         # orthonormal basis of the subspace
        self.noise = cfg.noise * rng.uniform(0.8, 1.2)
        self.k = k

    def off_direction(self, rng: np.random.Generator) -> np.ndarray:
        """Random unit direction orthogonal to the normal subspace."""
        v = rng.standard_normal(self.basis.shape[0])
        v -= self.basis @ (self.basis.T @ v)
        return (v / np.linalg.norm(v)).astype(np.float32)


def _ar1(rng: np.random.Generator, n: int, k: int, rho: np.ndarray) -> np.ndarray:
    """(n, k) AR(1) series, unit stationary variance, coefficient rho[j] per column."""
    from scipy.signal import lfilter

    rho = np.asarray(rho, dtype=np.float64).reshape(-1)
    e = rng.standard_normal((n, k))
    out = np.empty((n, k))
    for j in range(k):
        innov = e[:, j] * math.sqrt(1.0 - rho[j] ** 2)
        innov[0] = e[0, j]  # start in the stationary distribution
        out[:, j] = lfilter([1.0], [1.0, -rho[j]], innov)
    return out


def _noise(rng: np.random.Generator, n: int, d: int, level: float, ar: float) -> np.ndarray:
    e = rng.standard_normal((n, d), dtype=np.float32)
    if ar > 0:
        e[1:] *= np.float32(math.sqrt(1.0 - ar * ar))
        a = np.float32(ar)
        for t in range(1, n):  # in place, float32 (a row-by-row loop beats lfilter's float64 copy)
            e[t] += a * e[t - 1]
    e *= np.float32(level)
    return e


def _ramp(n: int, width: int) -> np.ndarray:
    """1 in the middle, smooth (cosine) ramps of `width` snippets at both ends."""
    w = np.ones(n)
    width = max(1, min(width, n // 2))
    t = (np.arange(width) + 0.5) / width
    r = 0.5 - 0.5 * np.cos(np.pi * t)
    w[:width] = r
    w[n - width:] = np.minimum(w[n - width:], r[::-1])
    return w


def _video(rng: np.random.Generator, scene: _SceneModel, cfg: SyntheticConfig, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Normal features (n, d) and the latent trajectory (n, k)."""
    lo, hi = cfg.tau_range
    tau = np.exp(rng.uniform(math.log(lo), math.log(hi), scene.k))
    z = _ar1(rng, n, scene.k, np.exp(-1.0 / tau))
    x = scene.mu + z.astype(np.float32) @ scene.A.T
    x += _noise(rng, n, cfg.dim, scene.noise, cfg.noise_ar)
    return x.astype(np.float32, copy=False), z


def _train_lengths(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    n_vid, total = cfg.n_train_videos, cfg.n_train
    w = rng.lognormal(0.0, 0.5, n_vid)
    lengths = np.maximum(2, np.floor(w / w.sum() * total).astype(np.int64))
    # fix the rounding so that the total is exact (longest videos absorb the difference)
    diff = total - int(lengths.sum())
    order = np.argsort(-lengths)
    i = 0
    while diff != 0:
        j = order[i % n_vid]
        step = 1 if diff > 0 else -1
        if lengths[j] + step >= 2:
            lengths[j] += step
            diff -= step
        i += 1
    return lengths


_PARTIAL_MARK = ".llsh-partial-bundle"


def _existing_bundle(out_dir: str) -> Optional[dict]:
    """The manifest of the bundle at out_dir, or None where there is nothing (absent or empty):
    generate() replaces only those.  Anything else (a user's folder, a file) raises WritePathError
    and is left alone."""
    if not os.path.lexists(out_dir):
        return None
    if not os.path.isdir(out_dir) or os.path.islink(out_dir):
        raise WritePathError(f"{out_dir}: expected a folder for the bundle, but it is a file or a link")
    if not os.listdir(out_dir):
        return None
    try:
        with open(os.path.join(out_dir, "manifest.json")) as f:
            manifest = json.load(f)
        ok = manifest.get("format") == BUNDLE_FORMAT
    except (OSError, ValueError, AttributeError):
        ok = False
    if ok:
        return manifest
    raise WritePathError(f"{out_dir}: exists and is not a feature bundle (no manifest.json of format "
                             f"{BUNDLE_FORMAT!r}); generate() replaces only bundles: give another folder")


def generate(out_dir: str, labels: Optional[Mapping[str, np.ndarray]] = None,
             config: Optional[SyntheticConfig] = None, *, overwrite: bool = False,
             progress: bool = False) -> FeatureBundle:
    """Writes a synthetic feature bundle to `out_dir` and returns it opened.

    labels: frame labels of the test videos (name -> 0/1 per frame); default: the real
        ShanghaiTech layout from ``ST_gt.npz`` (:func:`load_st_layout`).
    An existing complete bundle with the same configuration and layout is reused unless
    `overwrite`.  The bundle is built in ``out_dir + ".partial"`` and renamed when complete.
    """
    cfg = config or SyntheticConfig()
    if labels is None:
        labels = load_st_layout()
    if not isinstance(labels, Mapping) or not labels:
        raise InvalidInputError(f"labels: expected a non-empty mapping video -> 0/1 frame labels, got "
                                f"{type(labels).__name__} of {len(labels) if hasattr(labels, '__len__') else '?'}")
    names = sorted(labels) if cfg.test_videos is None else list(cfg.test_videos)
    missing = [n for n in names if n not in labels]
    if missing:
        raise ConfigError(f"test_videos not in the label layout: {missing[:5]}")
    frame_labels = {}
    for n in names:
        lab = np.asarray(labels[n])
        if lab.ndim != 1 or not lab.size or not np.isin(lab, (0, 1)).all():  # 5 or NaN were cast to uint8
            raise InvalidInputError(f"labels[{n!r}]: expected a non-empty 1-D array of 0/1 frame labels, got "
                                    f"shape {lab.shape} with values {np.unique(lab)[:5].tolist()}")
        frame_labels[n] = lab.astype(np.uint8)
    layout_sig = [[n, int(frame_labels[n].size), int(frame_labels[n].sum())] for n in names]

    old = _existing_bundle(out_dir)  # before the work: a folder that is not a bundle is never deleted
    if old is not None and not overwrite and old.get("config") == {"synthetic": cfg.to_json(), "layout": layout_sig}:
        return open_bundle(out_dir)
    tmp_dir = out_dir.rstrip("/\\") + ".partial"
    if os.path.lexists(tmp_dir):
        if not os.path.isfile(os.path.join(tmp_dir, _PARTIAL_MARK)):
            raise WritePathError(f"{tmp_dir}: exists and is not an unfinished bundle of this package (no "
                                 f"{_PARTIAL_MARK}); move it away, generate() builds the bundle there")
        shutil.rmtree(tmp_dir)
    os.makedirs(tmp_dir)
    open(os.path.join(tmp_dir, _PARTIAL_MARK), "w").close()

    d = cfg.dim
    root_ss = np.random.SeedSequence(cfg.seed)
    ss_model, ss_train, ss_test = root_ss.spawn(3)
    mrng = np.random.default_rng(ss_model)
    mu = cfg.mean_scale * mrng.standard_normal(d)
    shared = mrng.standard_normal((d, cfg.latent_shared))
    test_scenes = sorted({_scene_of(n) for n in names})
    scene_names = list(test_scenes)
    i = 1
    while len(scene_names) < max(cfg.n_train_scenes, len(test_scenes)):  # scenes seen in training only
        cand = f"{len(test_scenes) + i:02d}"
        if cand not in scene_names:
            scene_names.append(cand)
        i += 1
    scenes = {s: _SceneModel(mrng, cfg, mu, shared) for s in scene_names}
    # training videos per scene: proportional to the scene's test frames (train-only scenes get the mean)
    frames_per_scene = {s: sum(frame_labels[n].size for n in names if _scene_of(n) == s) for s in test_scenes}
    mean_frames = float(np.mean(list(frames_per_scene.values())))
    w = np.array([frames_per_scene.get(s, mean_frames) for s in scene_names], dtype=np.float64)
    train_scene = mrng.choice(len(scene_names), size=cfg.n_train_videos, p=w / w.sum())
    lengths = _train_lengths(mrng, cfg)

    from tqdm.auto import tqdm

    # ---- training set
    n_train = int(lengths.sum())
    train_mm = np.lib.format.open_memmap(os.path.join(tmp_dir, "train_features.npy"), mode="w+",
                                         dtype=np.float32, shape=(n_train, d))
    vids = np.empty(n_train, dtype=np.int32)
    train_videos, start = [], 0
    video_ss = ss_train.spawn(cfg.n_train_videos)
    for v in tqdm(range(cfg.n_train_videos), desc="synthetic train", disable=not progress, leave=False):
        rng = np.random.default_rng(video_ss[v])
        n = int(lengths[v])
        x, _ = _video(rng, scenes[scene_names[train_scene[v]]], cfg, n)
        train_mm[start:start + n] = x
        vids[start:start + n] = v
        train_videos.append({"name": f"{scene_names[train_scene[v]]}_train{v:03d}", "start": start, "count": n})
        start += n
    train_mm.flush()
    del train_mm
    np.save(os.path.join(tmp_dir, "train_video_ids.npy"), vids)

    # ---- test set
    snip = {n: snippet_labels(frame_labels[n], cfg.snippet_span) for n in names}
    n_test = int(sum(s.size for s in snip.values()))
    test_mm = np.lib.format.open_memmap(os.path.join(tmp_dir, "test_features.npy"), mode="w+",
                                        dtype=np.float32, shape=(n_test, d))
    test_lab = np.empty(n_test, dtype=np.uint8)
    test_videos, start, events = [], 0, []
    video_ss = ss_test.spawn(len(names))
    for vi, name in enumerate(tqdm(names, desc="synthetic test", disable=not progress, leave=False)):
        rng = np.random.default_rng(video_ss[vi])
        scene = scenes[_scene_of(name)]
        lab = snip[name]
        n = lab.size
        x, _ = _video(rng, scene, cfg, n)
        spread_norm = math.sqrt(cfg.signal_scale ** 2 + scene.noise ** 2) * math.sqrt(d)
        for a0, a1 in _runs(lab == 1):
            length = a1 - a0
            theta = rng.uniform(0.0, math.pi / 2)
            amp = float(rng.lognormal(math.log(cfg.anomaly_median), cfg.anomaly_spread))
            shift = float(rng.uniform(*cfg.latent_shift))
            delta = rng.standard_normal(scene.k)
            delta *= shift / np.linalg.norm(delta)
            disp = (math.cos(theta) * amp * spread_norm) * scene.off_direction(rng) \
                + math.sin(theta) * (scene.A @ delta.astype(np.float32))
            # the intensity wanders a little within the event
            wobble = 1.0 + 0.25 * _ar1(rng, length, 1, np.array([math.exp(-1 / 20.0)]))[:, 0]
            prof = _ramp(length, max(1, length // 6)) * np.clip(wobble, 0.3, None)
            x[a0:a1] += (prof[:, None] * disp[None, :]).astype(np.float32)
            events.append({"video": name, "start": a0, "stop": a1, "amplitude": amp, "latent_shift": shift,
                           "theta": theta})
        if rng.random() < cfg.nuisance_prob:
            normal_runs = [(a, b) for a, b in _runs(lab == 0) if b - a >= 20]
            if normal_runs:
                a, b = normal_runs[int(rng.integers(len(normal_runs)))]
                length = int(rng.integers(20, min(100, b - a) + 1))
                s0 = int(rng.integers(a, b - length + 1))
                amp = float(rng.lognormal(math.log(cfg.nuisance_median), cfg.anomaly_spread))
                disp = amp * spread_norm * scene.off_direction(rng)
                x[s0:s0 + length] += (_ramp(length, max(1, length // 4))[:, None] * disp[None, :]).astype(np.float32)
        test_mm[start:start + n] = x
        test_lab[start:start + n] = lab
        test_videos.append({"name": name, "start": start, "count": n, "n_frames": int(frame_labels[name].size)})
        start += n
    test_mm.flush()
    del test_mm
    np.save(os.path.join(tmp_dir, "test_snippet_labels.npy"), test_lab)
    np.savez(os.path.join(tmp_dir, "labels.npz"), **frame_labels)
    with open(os.path.join(tmp_dir, "events.json"), "w") as f:
        json.dump(events, f)
    write_bundle_manifest(tmp_dir, dim=d, train_videos=train_videos, test_videos=test_videos, source="synthetic",
                          config={"synthetic": cfg.to_json(), "layout": layout_sig})
    os.remove(os.path.join(tmp_dir, _PARTIAL_MARK))
    if os.path.exists(out_dir):
        _existing_bundle(out_dir)  # again: it may have changed during the work
        shutil.rmtree(out_dir)
    os.replace(tmp_dir, out_dir)
    return open_bundle(out_dir)
