"""StreamScorer: anomaly scores of a live video, frame by frame.

    from llsh_index import LearnableLSHIndex
    from llsh_index.stream import StreamScorer

    index = LearnableLSHIndex.load("normal.llsh")   # built on the extractor's features of normal video
    scorer = StreamScorer(index)                     # EfficientNet-Lite0, T 16, sigma 12: the demo's pipeline
    for frame in camera:                             # (H, W, 3) uint8 RGB
        out = scorer.push(frame)                     # the frames whose score became final
        for f, score in zip(out.frames, out.scores):
            ...
    out = scorer.flush()                             # the video ended: the remaining frames

The scores are the offline pipeline's: ``extract_video(frames, T=T, s=s, clamp=True)`` (one snippet
per frame, centred on it, the video's first frame repeated before it and its last after it), then
``index.score`` per snippet, then ``metrics.smooth_scores(sigma)`` (scipy's Gaussian, reflected at
the video's ends), which is what ``llsh-index score`` writes and ``evaluate`` smooths; the
per-video min-max normalisation of micro-AUC needs the whole video and is an evaluation step, not
a score.  Frame f's snippet reaches ``floor((T - 1) s / 2)`` frames ahead and the Gaussian
``int(4 sigma + 0.5)`` frames further, so its score is final that many frames after frame f
arrives: ``latency`` frames (55 at T 16, s 1, sigma 12: 2.2 s at 25 frames/s; one more per worker
thread beyond the first, see ``workers``).  At the video's end
``flush()`` repeats the last frame and reflects the scores, as the offline pipeline does.

``smoothing="causal"`` trades the centred Gaussian for a one-sided one over the past scores
(weights ``exp(-k^2 / (2 sigma^2))`` on the score k frames back, k = 0 .. int(4 sigma + 0.5),
normalised over the frames that exist), so a score is final as soon as its snippet is complete:
``floor((T - 1) s / 2)`` frames (7 at T 16).  It is not the paper's protocol (a peak is delayed by
about 0.8 sigma and flattened), but it is what a monitor that must answer now can compute.

Alerts: ``StreamScorer(index, threshold=t)`` decides too: each ``StreamScores`` then has ``alerts``,
``scores > t`` (strictly) for the same frames, and ``threshold``; without a threshold ``alerts`` is
None.  ``scorer.calibrate(normal, contamination=0.01)`` sets the threshold to the (1 - contamination)
quantile of the smoothed scores normal video gets, scored and smoothed as the stream does (same
snippets' features, scoring options, smoothing and sigma), so about that fraction of new normal
frames alert.  ``normal`` holds per-video features (one snippet per frame, ``extract`` with its
default clamping, the stream's T and s): by default the videos the index was built on, scored
leave-videos-out as LLSHDetector calibrates (each fold of videos by an index on the same hash layers
holding only the other folds: a video's own snippets sit in the index at distance 0), or with
``held_out=True`` normal videos that are not in the index, scored by it.

    scorer = StreamScorer(index)
    scorer.calibrate(load_feature_file("train.npz"), contamination=0.01)   # the index's own videos
    out = scorer.push(frame)                      # out.alerts: (k,) bool, out.scores > scorer.threshold

The model runs once per frame when the extractor offers ``frame_descriptors`` and
``pool_descriptors`` (EfficientNetLite0Extractor does), on ``workers`` threads, else once per
snippet through ``extract``; only the frames and scores a future snippet or window needs are kept.
Call ``close()`` (or use a ``with`` block) to stop the worker threads.
"""
from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Mapping
from typing import NamedTuple, Optional

import numpy as np
from scipy.ndimage import gaussian_filter1d

from . import metrics, probing
from ._validation import as_real, check_bool
from .errors import ConfigError, InvalidDTypeError, InvalidInputError, LLSHError, NotFittedError
from .index import _to_numpy, check_mode, check_reduce
from .sharded import _send
from .video import FeatureExtractor, _check_ts, _snippet_features, _to_rgb, labelled_anomalous

__all__ = ["StreamScorer", "StreamScores", "SMOOTHINGS", "alert_intervals"]

SMOOTHINGS = ("centred", "causal")
# the start of calibrate()'s warning that a feature file's labels mark frames of its videos anomalous
ANOMALOUS_CALIBRATION = "StreamScorer.calibrate: the calibration videos contain frames labelled anomalous"


class _StreamFields(NamedTuple):
    frames: np.ndarray  # (k,) int64 frame numbers, counted from the video's first frame
    scores: np.ndarray  # (k,) float64 smoothed anomaly scores (higher = more abnormal)
    raw: np.ndarray     # (k,) float64 unsmoothed scores of the same frames' snippets


class StreamScores(_StreamFields):
    """The frames whose scores became final in one push() / flush() call, in order: the named tuple
    (frames, scores, raw), and, not among its fields, ``threshold`` (the scorer's, or None) and
    ``alerts``.

    ``alerts`` is ``scores > threshold`` ((k,) bool: strictly above is abnormal), or None when the
    scorer has no threshold (no decision was asked for; not all False, which would say "normal").
    It is a property, not a fourth field, so ``frames, scores, raw = out`` and ``out[:3]`` keep
    working as before thresholds existed; ``threshold`` travels with copies, pickles and _replace().
    """
    threshold: Optional[float] = None  # set per instance (its __dict__) when the scorer has one

    def __new__(cls, frames, scores, raw, threshold: Optional[float] = None):
        self = super().__new__(cls, frames, scores, raw)
        if threshold is not None:
            self.threshold = threshold
        return self

    @property
    def alerts(self) -> Optional[np.ndarray]:
        """(k,) bool, True where the smoothed score is strictly above the threshold; None without one."""
        return None if self.threshold is None else np.asarray(self.scores) > self.threshold

    def _replace(self, **fields) -> "StreamScores":
        out = super()._replace(**fields)
        out.threshold = self.threshold
        return out


def alert_intervals(frames, alerts) -> list:
    """The runs of consecutive alerting frames as inclusive (start, end) frame pairs, in order: e.g.
    frames 0..9 with alerts at 2, 3, 4 and 7 give [(2, 4), (7, 7)].  ``frames``: (k,) increasing
    frame numbers (one or more StreamScores' frames, joined); a gap in the numbers ends a run."""
    frames = np.asarray(frames, dtype=np.int64).reshape(-1)
    alerts = np.asarray(alerts, dtype=bool).reshape(-1)
    if frames.shape != alerts.shape:
        raise InvalidInputError(f"alerts: expected one flag per frame ({frames.size}), got {alerts.size}")
    hit = frames[alerts]
    if hit.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(hit) != 1)  # a run ends where the next alerting frame is not the next frame
    starts = np.concatenate([hit[:1], hit[breaks + 1]])
    ends = np.concatenate([hit[breaks], hit[-1:]])
    return [(int(a), int(b)) for a, b in zip(starts, ends)]


class StreamScorer:
    """Frame-by-frame anomaly scores of one video at a time (see the module docstring).

    Parameters
    ----------
    index : a fitted LearnableLSHIndex (or anything with ``score(features, ...)``, such as a
        ShardedIndex, or the baselines' KNNScorer / KMeansScorer, which take no scoring options),
        built on features of this extractor with the same T and s.
    extractor : a FeatureExtractor; None: ``EfficientNetLite0Extractor()``, the demo's features.
    T, s : frames per snippet and the step between them, as the index's features were extracted.
    sigma : the Gaussian's width in frames (12, the protocol's); 0 or None: no smoothing.
    smoothing : "centred" (the offline protocol, exactly) or "causal" (past frames only).
    mode, n_probes, miss_probes, reduce : as ``index.score``.
    threshold : the smoothed score above which a frame is abnormal (a finite number), or None (the
        default): no decision, ``alerts`` is None.  Settable later (``scorer.threshold = t``), or by
        ``calibrate()`` from normal video.
    workers : threads running the per-frame model at once (None: the extractor's
        ``parallel_batches``, one a CPU core for EfficientNet-Lite0 on the CPU, else 1).  With W > 1
        a push hands its frames to the workers and returns without waiting for the newest W - 1
        batches of ``batch_size`` frames: one frame per push, a score is final W - 1 frames later
        (``latency`` counts them), and the model keeps W cores busy (one torch thread each: two
        threads on one frame collapse when another process holds a core).  ``close()`` (or a
        ``with`` block) stops the threads.

    One scorer follows one video at a time and is fed from one thread (it takes no lock); score
    several cameras with one scorer each (they may share the index, whose score() is thread-safe).
    """

    def __init__(self, index, extractor: Optional[FeatureExtractor] = None, *, T: int = 16, s: int = 1,
                 sigma: Optional[float] = 12.0, smoothing: str = "centred", mode: Optional[str] = None,
                 n_probes: int = 1, miss_probes: int = 0, reduce: str = "min", workers: Optional[int] = None,
                 threshold: Optional[float] = None):
        if not callable(getattr(index, "score", None)):
            raise ConfigError(f"index: expected a LearnableLSHIndex (an object with score()), got "
                              f"{type(index).__name__}")
        if getattr(index, "ntotal", 1) == 0 or getattr(index, "encoder", True) is None:
            raise NotFittedError("index: expected an index holding normal video (add() its features first), got an "
                                 "empty one")
        if extractor is None:
            from .video import EfficientNetLite0Extractor

            extractor = EfficientNetLite0Extractor()
        if not callable(getattr(extractor, "extract", None)) or not isinstance(getattr(extractor, "dim", None), int):
            raise ConfigError(f"extractor: expected a FeatureExtractor (dim and extract()), got "
                              f"{type(extractor).__name__}")
        dim = getattr(index, "dim", None)
        if dim is not None and dim != extractor.dim:
            raise ConfigError(f"extractor: its features have dimension {extractor.dim}, the index's {dim}: build "
                              f"the index on this extractor's features (e.g. llsh-index extract with the same "
                              f"settings)")
        self.T, self.s = _check_ts(T, s)
        try:
            self.sigma = metrics._check_sigma(sigma)
        except metrics.MetricsError as exc:  # out of range: here a constructor setting, typed as threshold's
            raise ConfigError(str(exc)) from exc
        if smoothing not in SMOOTHINGS:
            raise ConfigError(f"smoothing: expected one of {SMOOTHINGS}, got {smoothing!r}")
        if mode is not None:
            check_mode(mode)
        probing.check_probes(n_probes, miss_probes)
        check_reduce(reduce)
        self.threshold = threshold  # checked by the property's setter
        self.index = index
        self.extractor = extractor
        self.smoothing = smoothing
        # only the options set away from the paper's: a baseline scorer's score() takes none
        given = dict(mode=mode, n_probes=n_probes, miss_probes=miss_probes, reduce=reduce)
        paper = dict(mode=None, n_probes=1, miss_probes=0, reduce="min")
        self._score_kw = {k: v for k, v in given.items() if v != paper[k]}
        # one score of a blank feature now: an index that cannot score these features with these settings
        # (a ShardedIndex of another dimension, 'mean' without stored codes) fails here, not mid-video
        try:
            self._score(np.ones((1, extractor.dim), dtype=np.float32))
        except (LLSHError, TypeError) as exc:  # TypeError: a scorer whose score() takes no such option
            raise ConfigError(f"index: expected an index that scores the extractor's {extractor.dim}-dimensional "
                              f"snippet features with {self._score_kw}, got: {exc}") from exc
        self._per_frame = callable(getattr(extractor, "frame_descriptors", None)) and \
            callable(getattr(extractor, "pool_descriptors", None))
        if workers is None:
            workers = int(getattr(extractor, "parallel_batches", 1)) if self._per_frame else 1
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise ConfigError(f"workers: expected an int >= 1 or None, got {workers!r}")
        if workers > 1 and not self._per_frame:
            raise ConfigError(f"workers: {workers} threads need an extractor with frame_descriptors / "
                              f"pool_descriptors (the per-frame model), got {type(extractor).__name__}")
        self.workers = int(workers)
        # frames per job: the extractor's CNN batch (EfficientNet-Lite0 on the CPU: 1)
        self._chunk = max(1, int(getattr(extractor, "batch_size", 1) or 1))
        self._pool = None  # the workers' threads, started at the first push that needs them
        span = (self.T - 1) * self.s
        self._back = (span + 1) // 2  # frame f's snippet starts this many frames before f (snippet_frame_indices)
        self._ahead = span - self._back  # ... and ends this many after it
        self._radius = int(4.0 * self.sigma + 0.5) if self.sigma else 0  # scipy's kernel, truncate 4.0
        self._weights = np.exp(-0.5 * (np.arange(self._radius + 1) / self.sigma) ** 2) if self.sigma else np.ones(1)
        # scipy's gaussian_filter1d kernel (order 0), taps -r .. r: scipy on a whole window costs O(r^2)
        self._kernel = np.concatenate([self._weights[:0:-1], self._weights])
        self._kernel /= self._kernel.sum()
        self.reset()

    @property
    def latency(self) -> int:
        """Frames between a frame's arrival and its final score, one frame per push (until flush()):
        the snippet's reach ahead, the Gaussian's (centred smoothing) and the frames still with the
        workers."""
        # one frame per push, each job holds that one frame whatever the CNN batch: W - 1 frames wait
        pipeline = self.workers - 1
        return self._ahead + (self._radius if self.smoothing == "centred" else 0) + pipeline

    @property
    def threshold(self) -> Optional[float]:
        """The smoothed score above which a frame alerts (``StreamScores.alerts``), or None."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: Optional[float]) -> None:
        if value is not None:
            value = as_real(value, "threshold")
            if not math.isfinite(value):
                raise ConfigError(f"threshold: expected a finite number (the smoothed score above which a frame "
                                  f"alerts) or None, got {value!r}")
        self._threshold = value

    def calibrate(self, videos, contamination: float = 0.01, *, held_out: bool = False) -> float:
        """Set ``threshold`` from normal video and return it: the (1 - contamination) quantile
        (numpy's linear interpolation) of the smoothed scores of every frame of ``videos``, each
        video scored with this scorer's options and smoothed as the stream smooths (centred or
        causal, its sigma; each video on its own), so about `contamination` of new normal frames
        alert.

        videos : per-video snippet features, one snippet per frame (``extract`` with its default
            clamping, this scorer's T and s, its extractor): a FeatureFile (``load_feature_file``;
            its T, s, clamping and extractor are checked), a mapping name -> (n_frames, dim) array,
            or a list of such arrays.
        contamination : the fraction of normal frames expected to alert, in (0, 0.5].
        held_out : False (the default): ``videos`` are the ones the index holds (the features it
            was built on; at least two videos, and as many snippets as the index holds), scored
            leave-videos-out as LLSHDetector calibrates (the index's hash layers, each fold of
            videos scored by an index holding only the others: scored by the index itself, a
            video's snippets find themselves at distance 0, the quantile falls far too low).  A
            trained index (``training_config_`` set, as fit() leaves it) is cross-fitted instead:
            the videos in min(5, n_videos) folds, each scored by an index whose layers are trained
            afresh (its initial layers, its last fit()'s settings and seed) on the other folds'
            videos only, since layers trained on a video score it too low even where its snippets
            are not indexed (the fit runs once more a fold).  The index must offer ``empty_like()``
            (LearnableLSHIndex).  True: normal videos that are not in the index, scored by the
            index itself (any index).

        When the quantile reaches the miss value (the frames' whole window missed every hash table)
        the threshold is set just below it, so such frames alert (a UserWarning says that more
        than `contamination` of new normal frames will), as LLSHPyODDetector does.  A FeatureFile
        whose labels mark frames anomalous (a test split) is used as given, with a UserWarning naming
        its videos and their anomalous frame counts (as ``llsh-index fit`` warns).
        """
        from .sklearn import (CROSS_FIT_FOLDS, check_contamination, cross_fitted_scores, leave_videos_out_scores,
                              retrained_like)

        c = check_contamination(contamination)
        held_out = check_bool(held_out, "held_out")
        feats = self._calibration_videos(videos)
        anomalous = labelled_anomalous(getattr(videos, "labels", None), list(feats)) \
            if hasattr(videos, "features") and hasattr(videos, "meta") else None  # a FeatureFile's labels
        if anomalous:
            warnings.warn(f"{ANOMALOUS_CALIBRATION} ({anomalous}); the threshold counts them as normal; calibrate "
                          f"on normal (training split) videos", UserWarning, stacklevel=2)
        lengths = [len(f) for f in feats.values()]
        x = np.concatenate(list(feats.values()))
        if held_out:
            raw = self._score(x)
        else:
            if not callable(getattr(self.index, "empty_like", None)):
                raise ConfigError(f"calibrate: leave-videos-out needs an index with empty_like() (a "
                                  f"LearnableLSHIndex), got {type(self.index).__name__}; give normal videos that "
                                  f"are not in the index with held_out=True")
            if len(feats) < 2:
                raise InvalidInputError(f"calibrate: leave-videos-out needs at least 2 videos (one is held out while "
                                        f"the others are indexed), got {len(feats)}; give normal videos that are not "
                                        f"in the index with held_out=True")
            ntotal = getattr(self.index, "ntotal", None)
            if ntotal is not None and int(ntotal) != len(x):
                raise InvalidInputError(f"calibrate: expected the features the index was built on ({int(ntotal)} "
                                        f"snippets), got {len(x)} snippets of {len(feats)} videos; give the index's "
                                        f"own videos, or normal videos that are not in it with held_out=True")
            vid = np.repeat(np.arange(len(lengths)), lengths)
            if getattr(self.index, "training_config_", None) is not None:
                # trained layers (their projection of the principal directions above all) have seen these
                # videos, which puts them closer together than new video: a held-out index alone is still
                # in-sample (LLSHDetector's calibration, measured), so each fold's layers are retrained too
                fold = vid % min(CROSS_FIT_FOLDS, len(lengths))
                raw = cross_fitted_scores(retrained_like(self.index), x, vid, fold, self.index.device,
                                          **self._score_kw)
            else:
                raw = leave_videos_out_scores(self.index, x, vid, **self._score_kw)
        pieces = np.split(np.asarray(raw, dtype=np.float64), np.cumsum(lengths)[:-1])
        smoothed = np.concatenate([self._smooth_video(r) for r in pieces])
        threshold = float(np.quantile(smoothed, 1.0 - c))
        mode = self._score_kw.get("mode")
        if callable(getattr(self.index, "misses_score_above_hits", None)) and self.index.misses_score_above_hits(mode):
            miss = float(np.float32(self.index.default_miss_value(mode)))  # as the float32 scores carry it
            # a window of misses smooths to the miss value within rounding (a weighted mean): just below it
            below = miss * (1.0 - 1e-9)
            if threshold >= below:
                at_miss = float(np.mean(smoothed >= below))
                warnings.warn(f"StreamScorer.calibrate: {at_miss:.0%} of the calibration frames score the miss value "
                              f"{miss:g} (their whole window missed every hash table; contamination {c:g}), so the "
                              f"threshold is set just below it: every such frame alerts, and more than "
                              f"`contamination` of new normal frames will; fewer n_bits, more videos or miss_probes "
                              f"give finer scores", UserWarning, stacklevel=2)
                threshold = below
        self.threshold = threshold
        return threshold

    def _calibration_videos(self, videos) -> dict:
        """calibrate()'s videos as {name: (n, dim) float32}, checked."""
        if hasattr(videos, "features") and hasattr(videos, "meta"):  # a FeatureFile
            meta = videos.meta
            ours = {"T": self.T, "s": self.s, "clamp": True, "extractor": getattr(self.extractor, "name", None)}
            for key, want in ours.items():
                got = meta.get(key)
                if got is not None and want is not None and got != want:
                    raise ConfigError(f"calibrate: the features were extracted with {key} {got!r}, the stream "
                                      f"scores with {key} {want!r}: extract them with the stream's settings "
                                      f"(llsh-index extract, default clamping)")
            names = [v for v in videos.videos if v in videos.features]
            n_frames = getattr(videos, "n_frames", None) or {}
            for v in names:
                n = n_frames.get(v)
                if n is not None and len(videos.features[v]) != n:
                    raise InvalidInputError(f"calibrate: expected one snippet per frame, got {len(videos.features[v])} "
                                            f"snippets for the {n} frames of video {v!r} (extract with clamping, "
                                            f"the default)")
            items = [(v, videos.features[v]) for v in names]
        elif isinstance(videos, Mapping):
            items = [(str(k), v) for k, v in videos.items()]
        elif isinstance(videos, (list, tuple)):
            items = [(f"#{i}", v) for i, v in enumerate(videos)]
        else:
            raise InvalidInputError(f"calibrate: expected per-video features (a FeatureFile, a mapping name -> "
                                    f"(n_frames, dim) array, or a list of arrays; one video: [array]), got "
                                    f"{type(videos).__name__}")
        if not items:
            raise InvalidInputError("calibrate: expected at least one video of normal features, got none")
        out = {}
        dim = self.extractor.dim
        for name, f in items:
            try:
                a = np.asarray(f, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"calibrate: expected a ({dim},)-wide float array for video {name}, got a "
                                        f"{type(f).__name__} numpy cannot read ({exc})") from exc
            if a.ndim != 2 or a.shape[1] != dim or len(a) == 0:
                raise InvalidInputError(f"calibrate: expected (n_frames >= 1, {dim}) features for video {name} (the "
                                        f"extractor's dimension), got shape {a.shape}")
            if not np.isfinite(a).all():
                raise InvalidInputError(f"calibrate: expected finite features, got NaN or inf in video {name}")
            out[name] = a
        return out

    def _smooth_video(self, raw: np.ndarray) -> np.ndarray:
        """A whole video's raw scores smoothed as the stream emits them: centred, the offline
        protocol's Gaussian (metrics.smooth_scores, which the stream reproduces); causal, the
        stream's own per-frame weighting."""
        if self.smoothing == "centred" or self._radius == 0:
            return metrics.smooth_scores(raw, self.sigma)
        return np.array([self._smoothed(raw, f, len(raw)) for f in range(len(raw))], dtype=np.float64)

    @property
    def frames_seen(self) -> int:
        """Frames pushed since the video began (reset() / flush()), those still with the workers
        included.  After push() raised, the frame to push next."""
        return self._n

    def close(self) -> None:
        """Stop the worker threads (a later push starts them again and goes on with the video).

        The frames still with the workers are waited for and kept; if one of their jobs failed, its
        error is raised and its frames and the newer ones are dropped, as after a failed push()."""
        try:
            # not _abandon(): _n counts these frames, so dropping them would shift every later frame
            self._drain(keep=0)
        except BaseException:
            self._drop_unstored(len(self._store))
            raise
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __getstate__(self) -> dict:
        # a thread pool and its futures cannot be pickled: the copy gets the frames still with the
        # workers as stored descriptors (waited for, self untouched) and starts its own threads
        state = self.__dict__.copy()
        state["_pool"] = None
        if self._pending:
            store = deque(self._store)
            for fut in self._pending:
                store.extend(self._per_frame_descriptors(fut.result()))
            state["_store"], state["_pending"] = store, deque()
        return state

    def __enter__(self) -> "StreamScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def reset(self) -> None:
        """Forget the current video: the next push() is frame 0 of a new one."""
        self._abandon()
        self._n = 0  # frames pushed
        self._shape = None
        self._store: deque = deque()  # per-frame descriptors (or the frames), from frame _store_base on
        self._store_base = 0
        self._next_snippet = 0  # the first frame whose snippet is not scored yet
        self._raw: deque = deque()  # raw snippet scores, from frame _raw_base on
        self._raw_base = 0
        self._next_emit = 0  # the first frame whose final score is not given yet
        self._pending: deque = deque()  # the workers' jobs, oldest first: futures of descriptor dicts

    # ------------------------------------------------------------------ frames in
    def push(self, frames) -> StreamScores:
        """Add one frame (H, W, 3) or a batch (N, H, W, 3) of uint8 RGB frames (grey (H, W) and RGBA
        are converted as the offline readers do); returns the frames whose score became final.

        If it raises (the model or the index failed), the frames not yet scored-ready are dropped,
        those still with the workers included: ``frames_seen`` is the frame to push next."""
        batch = self._check_frames(frames)
        if not batch:
            return self._emit(end=False)
        stored = len(self._store)
        self._n += len(batch)
        try:
            if self.workers > 1:
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    getattr(self.extractor, "model", None)  # a lazily loaded model: once, before the workers
                    self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="llsh-stream")
                arr = np.stack(batch)
                for i in range(0, len(arr), self._chunk):
                    self._pending.append(self._pool.submit(self.extractor.frame_descriptors, arr[i:i + self._chunk]))
                self._drain(keep=self.workers - 1)
            elif self._per_frame:
                self._keep_descriptors(self.extractor.frame_descriptors(np.stack(batch)))
            else:  # copies: a camera loop may refill one buffer, and the next T - 1 snippets read this frame
                self._store.extend(np.array(f) for f in batch)
            self._score_snippets(self._stored() - self._ahead)
        except BaseException:  # as if the frames not stored before this call never came
            self._drop_unstored(stored)
            raise
        return self._emit(end=False)

    def flush(self) -> StreamScores:
        """The video ended: score the last frames (their snippets repeat the last frame), give every
        remaining score, and reset for the next video."""
        try:
            self._drain(keep=0)
            self._score_snippets(self._n)
            return self._emit(end=True)
        finally:
            self.reset()

    def _stored(self) -> int:
        """Frames whose descriptors (or frames) are in the store: the rest are with the workers."""
        return self._store_base + len(self._store)

    def _drop_unstored(self, stored: int) -> None:
        """After a failure: the workers' jobs and the store's frames beyond the first `stored` are
        dropped, and frames_seen goes back to the frames kept (the frame to push next)."""
        self._abandon()
        while len(self._store) > stored:
            self._store.pop()
        self._n = self._stored()
        if self._n == 0:
            self._shape = None

    @staticmethod
    def _per_frame_descriptors(desc) -> list:
        """frame_descriptors' {name: (N, ...)} as N per-frame {name: (...)} dicts, the store's entries."""
        n = len(next(iter(desc.values())))
        return [{k: v[i] for k, v in desc.items()} for i in range(n)]

    def _keep_descriptors(self, desc) -> None:
        self._store.extend(self._per_frame_descriptors(desc))

    def _drain(self, keep: int) -> None:
        """Wait for the workers' jobs but the newest `keep`, and store their descriptors in order."""
        while len(self._pending) > keep:
            self._keep_descriptors(self._pending[0].result())
            self._pending.popleft()

    def _abandon(self) -> None:
        """Cancel the workers' jobs (those running finish; their results are dropped)."""
        pending = getattr(self, "_pending", None)
        if pending:
            from concurrent.futures import wait

            for fut in pending:
                fut.cancel()
            wait(pending)
            pending.clear()

    def _check_frames(self, frames) -> list:
        """The frames as (H, W, 3) uint8 arrays: a list / tuple of frames, one frame ((H, W) grey or
        (H, W, C), C in 1, 3, 4), or a batch (N, H, W, C)."""
        def as_array(x, where):
            try:
                return np.asarray(x)
            except Exception as exc:  # a ragged nested list, a CUDA tensor: numpy's / torch's own errors
                raise InvalidInputError(f"frames: expected uint8 arrays (H, W, 3), got a {type(x).__name__} numpy cannot "
                                        f"read as one at {where} ({type(exc).__name__}: {exc})") from exc

        if isinstance(frames, (list, tuple)):
            items = [as_array(f, f"frame {self._n + i}") for i, f in enumerate(frames)]
        else:
            arr = as_array(frames, f"frame {self._n}")
            if arr.ndim == 4:
                items = list(arr)
            elif arr.ndim in (2, 3):
                items = [arr]
            else:
                raise InvalidInputError(f"frames: expected one frame (H, W, 3) or a batch (N, H, W, 3), got shape "
                                        f"{arr.shape}")
        out = []
        for i, f in enumerate(items):
            where = f"frame {self._n + i}"
            if f.dtype != np.uint8:
                raise InvalidDTypeError(f"frames: expected uint8 frames (0..255), got dtype {f.dtype} at {where}")
            if f.ndim not in (2, 3) or (f.ndim == 3 and f.shape[-1] not in (1, 3, 4)) or min(f.shape[:2]) < 1:
                raise InvalidInputError(f"frames: expected (H, W, 3) RGB frames (or (H, W) grey, (H, W, 4) RGBA), got "
                                        f"shape {f.shape} at {where}")
            f = _to_rgb(f)
            shape = self._shape if self._shape is not None else (out[0].shape if out else f.shape)
            if f.shape != shape:
                raise InvalidInputError(f"frames: {where} is {f.shape}, earlier frames of this video are {shape} (one "
                                        f"size per video; reset() or flush() starts another)")
            out.append(f)
        if out and self._shape is None:
            self._shape = out[0].shape
        return out

    # ------------------------------------------------------------------ snippets and scores
    def _score_snippets(self, stop: int) -> None:
        """Score the snippets of frames _next_snippet .. stop - 1 (each reaches at most frame _n - 1)."""
        start = self._next_snippet
        if stop <= start:
            return
        frames = np.arange(start, stop, dtype=np.int64)
        idx = np.clip(frames[:, None] - self._back + self.s * np.arange(self.T), 0, self._stored() - 1)
        local = idx - self._store_base
        if self._per_frame:
            keys = self._store[0].keys()
            desc = {k: np.stack([d[k] for d in self._store]) for k in keys}
            feats = _snippet_features(self.extractor, self.extractor.pool_descriptors(desc, local), idx, start,
                                      where="pool_descriptors")
        else:
            bs = max(1, int(getattr(self.extractor, "snippet_batch_size", 8)))
            store = list(self._store)
            # each batch checked as the offline extraction checks it (torch tensors, width, NaN/Inf)
            feats = np.concatenate([_snippet_features(
                self.extractor, self.extractor.extract(np.stack([np.stack([store[j] for j in row])
                                                                 for row in local[b:b + bs]])), idx[b:b + bs], start + b)
                for b in range(0, len(local), bs)])
        self._raw.extend(self._score(feats).tolist())
        self._next_snippet = stop
        # the earliest frame a later snippet reads
        keep = max(0, stop - self._back)
        while self._store_base < keep and self._store:
            self._store.popleft()
            self._store_base += 1

    def _score(self, feats: np.ndarray) -> np.ndarray:
        device = getattr(self.index, "device", "cpu")
        on_gpu = isinstance(device, str) and device.startswith("cuda")
        out = self.index.score(_send(feats, device) if on_gpu else feats, **self._score_kw)
        return np.asarray(_to_numpy(out), dtype=np.float64)

    def _emit(self, end: bool) -> StreamScores:
        n_raw = self._raw_base + len(self._raw)  # raw scores exist for frames < n_raw
        # centred: a frame's window reaches `radius` scores ahead, until the video's end
        stop = n_raw - (self._radius if self.smoothing == "centred" and not end else 0)
        first = self._next_emit
        frames = np.arange(first, max(stop, first), dtype=np.int64)
        raw = np.asarray(self._raw, dtype=np.float64)  # frames _raw_base ..
        scores = np.empty(len(frames), dtype=np.float64)
        for i, f in enumerate(frames):
            scores[i] = self._smoothed(raw, int(f), n_raw)
        self._next_emit = int(frames[-1]) + 1 if len(frames) else first
        # keep the raw scores a later frame's window reads
        keep = max(0, self._next_emit - self._radius)
        while self._raw_base < keep and self._raw:
            self._raw.popleft()
            self._raw_base += 1
        return StreamScores(frames, scores, raw[frames - (n_raw - len(raw))] if len(frames) else np.zeros(0),
                            self._threshold)

    def _smoothed(self, raw: np.ndarray, f: int, n_raw: int) -> float:
        base = n_raw - len(raw)  # the frame raw[0] belongs to
        r = self._radius
        if r == 0:
            return float(raw[f - base])
        if self.smoothing == "causal":
            past = raw[max(f - r, base) - base:f - base + 1][::-1]  # the score k frames back at [k]
            w = self._weights[:len(past)]
            return float(np.dot(w, past) / w.sum())
        lo, hi = max(f - r, base), min(f + r + 1, n_raw)
        if hi - lo == 2 * r + 1:  # the whole kernel inside the video: one dot product, O(r) per frame
            return float(np.dot(self._kernel, raw[lo - base:hi - base]))
        # near an end: scipy's filter on the window, which is cut at the video's own first or last
        # frame (before the first emit / at flush), where the protocol reflects
        return float(gaussian_filter1d(raw[lo - base:hi - base], self.sigma)[f - lo])
