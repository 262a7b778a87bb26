"""LLSHDetector: the index as a scikit-learn outlier detector.

    from llsh_index.sklearn import LLSHDetector
    det = LLSHDetector(contamination=0.05).fit(X_normal, video_ids=vids)  # video: give the video ids
    det.predict(X_new)            # +1 inlier, -1 outlier
    det.score_samples(X_new)      # higher = more normal (scikit-learn's convention)

Conventions are scikit-learn's, not PyOD's: score_samples and decision_function are higher for
normal data and predict returns +1 / -1 (PyOD's decision_function is higher for outliers and its
predict returns 0 / 1: for PyOD's ensembles and utilities use llsh_index.pyod_detector.LLSHPyODDetector,
the same detector with PyOD's conventions).  On video features give the video
ids: without them offset_ comes from leave-one-out scores, which near-duplicate neighbouring
snippets bias low, so far more than `contamination` of new normal video is flagged.  Two of
scikit-learn's outlier checks fail by design (check_outliers_train, check_outliers_fit_predict):
they expect `contamination` of the *training* rows flagged, while offset_ is calibrated on
held-out scores (a training row scored in-sample matches itself at distance 0).

Follows scikit-learn's outlier-detector API: score_samples is the negated anomaly score,
decision_function = score_samples - offset_, and offset_ is the `contamination` quantile of
held-out training scores (each training row scored by an index that does not hold it: leave-one-out
without video_ids, leave-videos-out with them), so about that fraction of *new* normal data is
flagged.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from typing import Optional

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError
from sklearn.utils.validation import check_is_fitted, validate_data

from . import probing
from ._validation import check_bool, check_video_ids, unmasked
from .errors import ConfigError, InvalidDTypeError, InvalidInputError, NotFittedError
from .index import LearnableLSHIndex, _normalise_device, _to_numpy, check_reduce, probed_scores
from .sharded import _send

# fit(X, video_ids=...): offset_ is calibrated on scores from indexes built without whole videos, in
# at most this many folds (video i, in order of first appearance, goes to fold i % n_folds)
CALIBRATION_FOLDS = 10
# train=True: offset_ is calibrated cross-fitted, by default in this many folds (calibration_folds)
CROSS_FIT_FOLDS = 5


class DetectorNotFittedError(NotFittedError, _SklearnNotFittedError):
    """score_samples / decision_function / predict before fit(): the package's NotFittedError and
    scikit-learn's at once, so either except clause catches it."""


class _TypedSetParams:
    """set_params raising the package's ConfigError (still a ValueError) for an unknown parameter."""

    def set_params(self, **params):
        try:
            return super().set_params(**params)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc


class LLSHDetector(_TypedSetParams, OutlierMixin, BaseEstimator):
    """Learnable-LSH outlier detector.

    Parameters
    ----------
    n_tables, n_bits, mode, miss_value, seed : as LearnableLSHIndex.
    n_probes, miss_probes, reduce : as LearnableLSHIndex.score (multi-probe, probing on a miss, the
        mean over tables; 1, 0 and "min", the defaults, are the paper).  offset_ is calibrated with
        the same settings.
    contamination : expected fraction of outliers in the training data, in (0, 0.5].
    train : train the hash layers with MoCo before indexing (False = plain LSH).
    iterations, lr, batch_size, queue_size, max_offset, n_neighbors, temperature, momentum,
        project_pcs, project_mean : as LearnableLSHIndex.fit; None (the default) takes fit()'s
        default: the paper's with video_ids, the static-data fallback's
        (training.FALLBACK_DEFAULTS) without them.  The Ped2 demo's schedule is
        ``LLSHDetector(**llsh_index.training.DEMO_TRAINING)``.
    device : "cpu" (default), "cuda" or "cuda:N": where the index trains, holds its tables and
        scores (the CUDA engine; CudaUnavailableError from fit() where there is none).  X stays a
        numpy array: each call copies it to the device and the scores back.  The fitted index stays
        where fit() put it; set_params(device=...) takes effect at the next fit().
    calibration_folds : with train=True, offset_ is calibrated cross-fitted in this many folds (default
        5; see Calibration); 0 calibrates on the layers trained on all rows (in-sample: biased low, fit
        warns).  Cross-fitting trains the layers calibration_folds more times (fit about 5x slower).
    fit(X, y=None, video_ids=None): video_ids give temporal positives; without them positives are
    feature-space neighbours.  y is ignored, with a warning (fit(X, vids) would put the video ids
    there: pass video_ids=vids).

    Features: give the raw (non-negative) CNN features as they are.  The hash hyperplanes have no
    bias, so centred or standardised features (StandardScaler, in a pipeline too) get balanced,
    near-random bits: held-out rows miss every table and the scores rank at chance (fit warns).

    Calibration (offset_): the `contamination` quantile of held-out training scores, so that about
    that fraction of *new* normal data is flagged.  Without video_ids each training row is scored
    with itself left out of its buckets (exact leave-one-out).  With video_ids that is not enough:
    neighbouring snippets of a video are near-duplicates, so a left-out snippet still finds its
    twin and the training scores sit far below any new video's (on the Ped2 demo features almost
    every normal test snippet was flagged).  So with video_ids the videos are split into
    min(CALIBRATION_FOLDS, n_videos) folds (video i, in order of first appearance, into fold
    i % n_folds); each fold's rows are scored, with the detector's mode, miss_value, n_probes,
    miss_probes and reduce, by an index on the same hash layers (trained on all the data) that holds
    only the other folds' rows.  With train=True (and calibration_folds >= 2) the layers themselves
    are cross-fitted too: they were trained (with the top principal directions of the projection) on
    the very rows they would score, which puts those rows closer together than new rows (on
    MVTec-AD's ResNet-18 embeddings, at contamination 0.1, 41-70% of new normal images were flagged).
    So the rows (without video_ids: row i in fold cross_fit_folds(n, k, seed)[i]) or videos (video v
    in fold v % k) are split into k = min(calibration_folds, n // 2 or n_videos) folds, and each
    fold is scored by an index whose layers were trained, with the same settings and seed, on the
    other folds only and which holds only them ("cross-fitted" / "cross-fitted-videos"); the final
    index is still trained on all rows.  calibration_ says which was used, held_out_scores_ holds those
    scores (float64 anomaly scores, higher = more abnormal, in the rows' order).  A single video leaves nothing to
    hold out: fit() then falls back to leave-one-out and warns (UserWarning) that offset_ is likely
    too low for new videos (more than `contamination` of new normal data flagged); fit several
    videos to avoid it.
    """

    def __init__(self, n_tables=8, n_bits=32, mode="mean", miss_value=None, contamination=0.1, train=True,
                 iterations=None, lr=None, batch_size=None, queue_size=None, max_offset=150, n_neighbors=None,
                 seed=0, n_probes=1, miss_probes=0, reduce="min", device="cpu", temperature=None, momentum=None,
                 project_pcs=None, project_mean=None, calibration_folds=CROSS_FIT_FOLDS):
        self.n_tables = n_tables
        self.n_bits = n_bits
        self.mode = mode
        self.miss_value = miss_value
        self.contamination = contamination
        self.train = train
        self.iterations = iterations
        self.lr = lr
        self.batch_size = batch_size
        self.queue_size = queue_size
        self.max_offset = max_offset
        self.n_neighbors = n_neighbors
        self.seed = seed
        self.n_probes = n_probes
        self.miss_probes = miss_probes
        self.reduce = reduce
        self.device = device
        self.temperature = temperature
        self.momentum = momentum
        self.project_pcs = project_pcs
        self.project_mean = project_mean
        self.calibration_folds = calibration_folds

    def fit(self, X, y=None, video_ids=None):
        before = self.__dict__.copy()  # a fit that fails leaves the fitted state it found, whole
        try:
            if y is not None:  # fit(X, vids) puts the video ids here: say so rather than drop them
                warnings.warn(f"{type(self).__name__}.fit: y is ignored (the detector is unsupervised: fit it on "
                              "normal data); to give video ids pass them by name: fit(X, video_ids=vids)",
                              UserWarning, stacklevel=2)
            return self._fit(X, video_ids)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def _fit(self, X, video_ids):
        c = check_contamination(self.contamination)  # the settings first: a bad one fails before validate_data
        probing.check_probes(self.n_probes, self.miss_probes)  # ConfigError
        check_reduce(self.reduce)
        check_bool(self.train, "train")
        folds = check_calibration_folds(self.calibration_folds)
        device = _normalise_device(self.device)  # ConfigError; a CUDA device that is absent: below, at the index
        # ensure_min_features: LayerNorm of one feature is 0 whatever it is (LearnableLSHIndex: dim >= 2)
        X = self._validate(X, ensure_min_samples=2, ensure_min_features=2)
        # checked here too, not only by index.fit: the calibration uses them even when train=False
        vid = None if video_ids is None else check_video_ids(video_ids, X.shape[0])
        index = self._new_index(X.shape[1], device)  # CudaUnavailableError before any copy to the device
        Xd = _on_device(X, device)
        self._train(index, Xd, video_ids)
        index.add(Xd)
        self.index_ = index
        n_videos = 0 if vid is None else int(vid.max()) + 1
        # rows (or videos) per fold that the cross-fitted layers can train on: at least 2 folds, and each
        # fold's training part at least two rows (videos: at least one other video)
        k = min(folds, n_videos if vid is not None else X.shape[0] // 2)
        if self.train and folds and k >= 2:
            # The layers (and the projection's principal directions) were fitted on these very rows, so
            # every held-out score above would still be in-sample: trained layers put their own
            # training rows closer together than new rows (on MVTec-AD's embeddings leave-one-out
            # scores flagged 40-70% of new normal images at contamination 0.1).  Cross-fitting: each
            # fold scored by layers trained, with the same settings and seed, on the other folds only.
            scores = self._cross_fitted_scores(X, vid, k, device)
            self.calibration_ = "cross-fitted" if vid is None else "cross-fitted-videos"
        elif vid is not None and vid.max() >= 1:
            scores, self.calibration_ = self._leave_videos_out_scores(X, vid), "leave-videos-out"
        else:
            if vid is not None:
                warnings.warn("LLSHDetector.fit: video_ids name a single video, so no video can be held out to "
                              "calibrate offset_; it falls back to leave-one-out scores, which neighbouring "
                              "near-duplicate snippets bias low: expect more than `contamination` of new normal "
                              "data to be flagged.  Fit on several videos to calibrate on held-out videos.",
                              UserWarning, stacklevel=3)
            scores, self.calibration_ = self._leave_one_out_scores(Xd), "leave-one-out"
        if self.train and self.calibration_ in ("leave-one-out", "leave-videos-out") and (vid is None or n_videos >= 2):
            why = ("calibration_folds=0" if not folds else
                   f"too few {'videos' if vid is not None else 'rows'} to cross-fit")
            warnings.warn(f"LLSHDetector.fit: offset_ is calibrated on layers trained on the same rows ({why}), so "
                          "the held-out scores are in-sample and biased low: expect more than `contamination` of "
                          "new normal data to be flagged (set calibration_folds >= 2 to cross-fit the calibration, "
                          "or train=False)", UserWarning, stacklevel=3)
        scores = np.asarray(scores, dtype=np.float64)  # the leave-one-out path combines in float32
        self.held_out_scores_ = scores  # anomaly scores (higher = more abnormal); PyOD's decision_scores_
        self.offset_ = float(np.percentile(-scores, 100.0 * float(c)))
        miss = float(np.float32(index.default_miss_value()))  # as the float32 scores carry it
        # the quantile falls on held-out rows that missed every table
        if self.offset_ <= -miss and index.misses_score_above_hits():
            missed = float(np.mean(scores >= miss))
            # just above the miss value: a row that misses every table is an outlier, not a tie at 0
            self.offset_ = float(np.nextafter(-miss, 0.0))
            trap = ("centred or standardised features (e.g. StandardScaler) cause this: the hash hyperplanes have "
                    "no bias, so such rows get balanced, near-random bits and new rows miss every table; give the raw "
                    "(non-negative) CNN features as they are")
            hint = (f"X has negative values: {trap}.  Otherwise fewer n_bits, more videos or miss_probes "
                    if (X < 0).any() else
                    f"fewer n_bits, more videos or miss_probes give finer scores ({trap}).")
            warnings.warn(f"LLSHDetector.fit: {missed:.0%} of the held-out training rows miss every hash table "
                          f"(contamination {float(c):g}), so every row that misses is flagged and more than "
                          f"`contamination` of new normal data will be.  {hint}"
                          + ("" if not (X < 0).any() else "give finer scores"), UserWarning, stacklevel=3)
        return self

    def _new_index(self, dim: int, device: str) -> LearnableLSHIndex:
        return LearnableLSHIndex(dim, n_tables=self.n_tables, n_bits=self.n_bits, mode=self.mode,
                                 miss_value=self.miss_value, store_codes=self.mode == "mean", seed=self.seed,
                                 device=device)

    def _train(self, index: LearnableLSHIndex, X, video_ids) -> None:
        """Trains index's layers on rows X (on its device) with the detector's settings, when train=True."""
        if self.train:
            index.fit(X, video_ids=video_ids, iterations=self.iterations, lr=self.lr, batch_size=self.batch_size,
                      queue_size=self.queue_size, max_offset=self.max_offset, n_neighbors=self.n_neighbors,
                      temperature=self.temperature, momentum=self.momentum, project_pcs=self.project_pcs,
                      project_mean=self.project_mean, progress=False)

    def _cross_fitted_scores(self, X, vid, n_folds: int, device: str) -> np.ndarray:
        """Anomaly scores of the training rows X (numpy), each fold's rows scored by an index whose
        layers were trained (same settings and seed) on, and which holds, only the other folds' rows.
        Folds: with video ids, video v (0.. in order of first appearance) in fold v % n_folds; without,
        the rows in fold_ids(n, n_folds, seed)."""
        fold = vid % n_folds if vid is not None else cross_fit_folds(X.shape[0], n_folds, self.seed)

        def trained(rest, rest_vid):
            idx = self._new_index(X.shape[1], device)
            self._train(idx, _on_device(rest, device), rest_vid)
            return idx

        return cross_fitted_scores(trained, X, vid, fold, device, n_probes=self.n_probes,
                                   miss_probes=self.miss_probes, reduce=self.reduce)

    def _leave_videos_out_scores(self, X, vid) -> np.ndarray:
        """Anomaly scores of the training rows, each row scored by an index (same hash layers) that
        holds none of its fold's videos: video v (0.. in order of first appearance) is in fold
        v % min(CALIBRATION_FOLDS, n_videos).  Scored as score_samples scores (mode, miss_value,
        n_probes, miss_probes, reduce)."""
        return leave_videos_out_scores(self.index_, X, vid, n_probes=self.n_probes, miss_probes=self.miss_probes,
                                       reduce=self.reduce)

    def _leave_one_out_scores(self, X) -> np.ndarray:
        """Anomaly scores of the training rows with each row left out of its own buckets.

        A training row sits in its own bucket at distance 0, so its plain score is biased low and
        a threshold taken on it would flag far more than `contamination` of new normal data.  The
        shards' partial sums give the exact leave-one-out value: remove one item at distance 0.
        With probes, only the row's own key changes when it leaves (every other probed bucket
        never held it), so each probe rank takes the index's distance there and the
        leave-one-out one at the row's own key.
        """
        index = self.index_
        X = _on_device(X, index.device)
        dev_codes, dev_keys = index.hash_queries(X)  # once: the probes below start from the same codes
        part = index.partial_scores(query_codes=dev_codes, query_keys=dev_keys)  # numpy, on any device
        codes, keys = _to_numpy(dev_codes), _to_numpy(dev_keys)  # the leave-one-out arithmetic runs on the host
        part["count"] = part["count"] - 1  # this row, at distance 0, leaves its bucket
        if part["mode"] == "light":
            part["sum"] = part["sum"] - codes  # and its code leaves the bucket's sum
        if self.n_probes == 1 and not self.miss_probes:
            return index.combine_partial_scores([part], reduce=self.reduce, query_codes=codes)
        own = index.combine_partial_scores([part], return_distances=True, miss_value=math.inf, query_codes=codes)

        dev = str(dev_codes.device) if isinstance(dev_codes, torch.Tensor) else None  # where the tables are

        def distances(c, k, rows):  # at probe keys k, +inf where the bucket is empty
            rows = slice(None) if rows is None else rows
            p = index.partial_scores(query_codes=c if dev is None else _send(c, dev),
                                     query_keys=k if dev is None else _send(k, dev))
            d = index.combine_partial_scores([p], return_distances=True, query_codes=c, miss_value=math.inf)
            return np.where(k == keys[rows], own[rows], d)

        return probed_scores(codes, keys, self.n_probes, self.miss_probes, self.reduce, distances,
                             index.default_miss_value(index.mode), return_distances=False)

    def _validate(self, X, **kwargs):
        """scikit-learn's input checks, raised as the package's typed errors (still ValueError /
        TypeError), with short messages of ours where scikit-learn's dump the array (1-D input) or
        give advice for other estimators (NaN / inf)."""
        X = unmasked(X, "X")
        try:
            return validate_data(self, X, dtype=[np.float32, np.float64], **kwargs)
        except TypeError as exc:  # sparse input, unsupported dtypes
            raise InvalidDTypeError(f"X: {exc}") from exc
        except ValueError as exc:  # NaN / Inf, too few rows or features, 1-D, strings, a feature-count mismatch
            msg = str(exc)
            shape = getattr(X, "shape", None)
            if shape is None:
                try:
                    shape = np.shape(X)
                except ValueError:  # ragged nested lists
                    shape = None
            if msg.startswith(("Expected 2D array", "Expected a 2-dimensional container")) and shape is not None:
                # "Reshape your data" is what scikit-learn's estimator checks look for
                raise InvalidInputError(f"X: expected a 2-D array (n_samples, n_features), got shape "
                                        f"{tuple(shape)}.  Reshape your data: X.reshape(1, -1) for a single sample, "
                                        f"X.reshape(-1, 1) for a single feature") from None
            if "contains NaN" in msg or "contains infinity" in msg or "too large for dtype" in msg:
                raise InvalidInputError(f"X: expected finite values, got NaN or inf in X{_first_non_finite(X)}") \
                    from None
            raise InvalidInputError(f"X: {msg}") from exc

    def score_samples(self, X):
        """Negated anomaly score (higher = more normal), as scikit-learn detectors return."""
        try:
            check_is_fitted(self, "index_")
        except _SklearnNotFittedError as exc:
            raise DetectorNotFittedError(str(exc)) from None
        X = _on_device(self._validate(X, reset=False), self.index_.device)
        index = self.index_
        scores = np.asarray(_to_numpy(index.score(X, n_probes=self.n_probes, miss_probes=self.miss_probes,
                                                  reduce=self.reduce)), dtype=np.float64)
        if len(scores) >= 2 and scores.min() == scores.max():  # constant: did every row miss every table?
            miss = index.default_miss_value()
            # the distances with +inf where a bucket is absent (after any probing), as score() takes them
            d = _to_numpy(index._table_distances(X, None, self.n_probes, self.miss_probes, math.inf))
            if np.isinf(d).all():
                warnings.warn(f"LLSHDetector.score_samples: all {len(scores)} rows missed every hash table (no "
                              f"training row shares a bucket with any of them), so every score is the miss value "
                              f"{miss:g} and the scores carry no ranking (expected only if every row is unlike all "
                              f"the training data).  Check the feature preprocessing (the rows should be "
                              f"transformed like the training rows), or set miss_probes (e.g. miss_probes=32) to "
                              f"probe nearby buckets on a miss, or use fewer n_bits.",
                              UserWarning, stacklevel=2)
        return -scores

    def decision_function(self, X):
        """score_samples - offset_: negative for outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """+1 for inliers, -1 for outliers."""
        return np.where(self.decision_function(X) >= 0, 1, -1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


def _first_non_finite(X) -> str:
    """" (row i)" for the first row of X holding NaN or inf, "" where that cannot be told."""
    try:
        a = np.asarray(X, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)) if a.ndim >= 1 else []
    except (TypeError, ValueError):
        return ""
    return f" (row {int(bad[0])})" if len(bad) else ""


def check_contamination(contamination) -> float:
    """The expected fraction of outliers, a real number in (0, 0.5], as a float; else ConfigError."""
    c = contamination
    if isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Real) or not 0.0 < float(c) <= 0.5:
        raise ConfigError(f"contamination: expected a number in (0, 0.5], got {c!r}")
    return float(c)


def check_calibration_folds(folds) -> int:
    """calibration_folds: 0 (calibrate on the layers trained on all rows) or an int >= 2; else ConfigError."""
    if isinstance(folds, (bool, np.bool_)) or not isinstance(folds, numbers.Integral) or folds < 0 or folds == 1:
        raise ConfigError(f"calibration_folds: expected 0 (off) or an integer >= 2, got {folds!r}")
    return int(folds)


def cross_fit_folds(n: int, n_folds: int, seed: int) -> np.ndarray:
    """The fold (0..n_folds-1) of each of n rows in LLSHDetector's cross-fitted calibration without
    video ids: arange(n) % n_folds, shuffled by numpy's default_rng(seed mod 2**64)."""
    return np.random.default_rng(int(seed) % 2 ** 64).permutation(np.arange(n) % n_folds)


def cross_fitted_scores(trained, X: np.ndarray, vid: Optional[np.ndarray], fold: np.ndarray, device: str,
                        **score_kw) -> np.ndarray:
    """Held-out anomaly scores of rows X (numpy): fold f's rows (fold == f) scored, with index.score's
    ``score_kw``, by ``trained(rows, their video ids or None)`` -- an index whose layers were trained on
    the other folds' rows only (or, for leave_videos_out_scores, the same layers) -- once it holds those
    rows.  float64, in the rows' order.  LLSHDetector's and StreamScorer.calibrate's calibrations."""
    out = np.empty(X.shape[0], dtype=np.float64)
    for f in np.unique(fold):
        held = fold == f
        rest = np.ascontiguousarray(X[~held])
        with warnings.catch_warnings():  # the settings' warnings were given once, by the full fit
            warnings.simplefilter("ignore")
            idx = trained(rest, None if vid is None else vid[~held])
        idx.add(_on_device(rest, device))
        out[held] = _to_numpy(idx.score(_on_device(np.ascontiguousarray(X[held]), device), **score_kw))
    return out


def retrained_like(index: LearnableLSHIndex):
    """``trained(rows, video_ids)`` for cross_fitted_scores: a new index with `index`'s settings and
    initial (seeded) layers, trained on those rows as `index`'s last fit() was (its training_config_)."""
    config = dataclasses.asdict(index.training_config_)
    config["progress"] = False

    def trained(rows, video_ids):
        fresh = LearnableLSHIndex(index.dim, index.n_tables, index.n_bits, mode=index.mode,
                                  miss_value=index.miss_value, code_dtype=index.code_dtype,
                                  store_codes=index.store_codes, seed=index.seed, device=index.device)
        return fresh.fit(_on_device(rows, index.device), video_ids=video_ids, **config)

    return trained


def leave_videos_out_scores(index: LearnableLSHIndex, X: np.ndarray, vid: np.ndarray, **score_kw) -> np.ndarray:
    """Held-out anomaly scores of rows X (numpy) of several videos: video v (vid, 0.. in order of first
    appearance, at least two videos) is in fold v % min(CALIBRATION_FOLDS, n_videos), and each fold's
    rows are scored, with index.score's ``score_kw``, by an index on `index`'s hash layers (and
    settings) that holds only the other folds' rows.  float64, in the rows' order.  LLSHDetector's
    calibration, and llsh_index.stream.StreamScorer.calibrate's."""
    fold = vid % min(CALIBRATION_FOLDS, int(vid.max()) + 1)
    return cross_fitted_scores(lambda rows, video_ids: index.empty_like(), X, vid, fold, index.device, **score_kw)


def _on_device(X, device: str):
    """Validated rows (numpy, or a tensor already made here) as the index on `device` takes them: a
    zero-copy CPU tensor (scored as the numpy array would be), or a copy on the CUDA device."""
    if isinstance(X, torch.Tensor):
        t = X
    else:
        if any(st < 0 for st in X.strides):  # X[::-1]: validate_data keeps the view, torch.from_numpy refuses it
            X = X.copy()
        with warnings.catch_warnings():  # read-only arrays (memmaps) are fine: the index never writes to them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(X)
    return t if device == "cpu" else t.to(device)
