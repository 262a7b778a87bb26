"""LLSHDetector: the index as a scikit-learn outlier detector (and so a PyOD-style component).

    from llsh_index.sklearn import LLSHDetector
    det = LLSHDetector(contamination=0.05).fit(X_normal)
    det.predict(X_new)            # +1 inlier, -1 outlier
    det.score_samples(X_new)      # higher = more normal (scikit-learn's convention)

Follows scikit-learn's outlier-detector API: score_samples is the negated anomaly score,
decision_function = score_samples - offset_, and offset_ is the `contamination` quantile of the
training scores, so about that fraction of the training data is flagged.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError
from sklearn.utils.validation import check_is_fitted, validate_data

from . import probing
from .errors import ConfigError, NotFittedError
from .index import LearnableLSHIndex, check_reduce, probed_scores


class DetectorNotFittedError(NotFittedError, _SklearnNotFittedError):
    """score_samples / decision_function / predict before fit(): the package's NotFittedError and
    scikit-learn's at once, so either except clause catches it."""


class LLSHDetector(OutlierMixin, BaseEstimator):
    """Learnable-LSH outlier detector.

    Parameters
    ----------
    n_tables, n_bits, mode, miss_value, seed : as LearnableLSHIndex.
    n_probes, miss_probes, reduce : as LearnableLSHIndex.score (multi-probe, probing on a miss, the
        mean over tables; 1, 0 and "min", the defaults, are the paper).  offset_ is calibrated with
        the same settings.
    contamination : expected fraction of outliers in the training data, in (0, 0.5].
    train : train the hash layers with MoCo before indexing (False = plain LSH).
    iterations, lr, batch_size, queue_size, max_offset, n_neighbors : as LearnableLSHIndex.fit;
        None (the default) takes fit()'s default: the paper's with video_ids, the static-data
        fallback's (training.FALLBACK_DEFAULTS) without them.
    fit(X, y=None, video_ids=None): video_ids give temporal positives; without them positives are
    feature-space neighbours.
    """

    def __init__(self, n_tables=8, n_bits=32, mode="mean", miss_value=None, contamination=0.1, train=True,
                 iterations=None, lr=None, batch_size=None, queue_size=None, max_offset=150, n_neighbors=None,
                 seed=0, n_probes=1, miss_probes=0, reduce="min"):
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

    def fit(self, X, y=None, video_ids=None):
        before = self.__dict__.copy()  # a fit that fails leaves the fitted state it found, whole
        try:
            return self._fit(X, video_ids)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def _fit(self, X, video_ids):
        c = self.contamination  # the settings first: a bad one fails before validate_data resets n_features_in_
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Real) or not 0.0 < float(c) <= 0.5:
            raise ConfigError(f"contamination: expected a number in (0, 0.5], got {c!r}")
        probing.check_probes(self.n_probes, self.miss_probes)  # ConfigError
        check_reduce(self.reduce)
        # ensure_min_features: LayerNorm of one feature is 0 whatever it is (LearnableLSHIndex: dim >= 2)
        X = validate_data(self, X, dtype=[np.float32, np.float64], ensure_min_samples=2, ensure_min_features=2)
        index = LearnableLSHIndex(X.shape[1], n_tables=self.n_tables, n_bits=self.n_bits, mode=self.mode,
                                  miss_value=self.miss_value, store_codes=self.mode == "mean", seed=self.seed)
        if self.train:
            index.fit(X, video_ids=video_ids, iterations=self.iterations, lr=self.lr, batch_size=self.batch_size,
                      queue_size=self.queue_size, max_offset=self.max_offset, n_neighbors=self.n_neighbors,
                      progress=False)
        index.add(X)
        self.index_ = index
        self.offset_ = float(np.percentile(-self._leave_one_out_scores(X), 100.0 * float(c)))
        return self

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
        codes, keys = index.hash_queries(X)  # once: the probes below start from the same codes
        part = index.partial_scores(query_codes=codes, query_keys=keys)
        part["count"] = part["count"] - 1  # this row, at distance 0, leaves its bucket
        if part["mode"] == "light":
            part["sum"] = part["sum"] - codes  # and its code leaves the bucket's sum
        if self.n_probes == 1 and not self.miss_probes:
            return index.combine_partial_scores([part], reduce=self.reduce, query_codes=codes)
        own = index.combine_partial_scores([part], return_distances=True, miss_value=math.inf, query_codes=codes)

        def distances(c, k, rows):  # at probe keys k, +inf where the bucket is empty
            rows = slice(None) if rows is None else rows
            p = index.partial_scores(query_codes=c, query_keys=k)
            d = index.combine_partial_scores([p], return_distances=True, query_codes=c, miss_value=math.inf)
            return np.where(k == keys[rows], own[rows], d)

        return probed_scores(codes, keys, self.n_probes, self.miss_probes, self.reduce, distances,
                             index.default_miss_value(index.mode), return_distances=False)

    def score_samples(self, X):
        """Negated anomaly score (higher = more normal), as scikit-learn detectors return."""
        try:
            check_is_fitted(self, "index_")
        except _SklearnNotFittedError as exc:
            raise DetectorNotFittedError(str(exc)) from None
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        return -np.asarray(self.index_.score(X, n_probes=self.n_probes, miss_probes=self.miss_probes,
                                             reduce=self.reduce), dtype=np.float64)

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
