"""LLSHPyODDetector: the index as a PyOD outlier detector.

    from llsh_index.pyod_detector import LLSHPyODDetector
    det = LLSHPyODDetector(contamination=0.05).fit(X_normal, video_ids=vids)  # video: give the video ids
    det.decision_function(X_new)  # the paper's anomaly score: higher = more abnormal
    det.predict(X_new)            # 1 outlier, 0 inlier
    det.predict_proba(X_new)      # PyOD's [P(inlier), P(outlier)]

    from pyod.models.feature_bagging import FeatureBagging
    FeatureBagging(base_estimator=LLSHPyODDetector(train=False), n_estimators=5).fit(X_normal)

The same detector as llsh_index.sklearn.LLSHDetector (same parameters, same index, same held-out
calibration), with PyOD's conventions instead of scikit-learn's: decision_function is the anomaly
score itself, labels are 0 / 1, and it subclasses pyod.models.base.BaseDetector, so PyOD's ensembles
(FeatureBagging, LSCP), its score combination and its probability / confidence methods take it.
LLSHDetector's scores are negated (higher = more normal): PyOD's ensembles would combine them
upside down.

decision_scores_, PyOD's outlier scores of the training data, are *held-out* scores, as PyOD's own
KNN leaves each training row out of its neighbours: a training row sits in its own bucket at
distance 0, so its in-sample score says nothing of how new normal data scores.  Without video_ids
each row is scored with itself left out; with them, by an index holding none of its fold's videos
(LLSHDetector's calibration: neighbouring snippets of one video are near-duplicates).  threshold_
is their (1 - contamination) quantile, so about `contamination` of new normal data is flagged;
when the quantile falls on rows that miss every table it sits just below the miss value, so a row
that misses is an outlier (fit warns).  contamination is a float in (0, 0.5] (np.float64 too, not
np.float32: PyOD's methods take any other type for a PyThresh object, and PyThresh is not taken).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

try:
    from pyod.models.base import BaseDetector
except ImportError as exc:  # PyOD is an optional dependency (extra "pyod")
    raise ImportError("llsh_index.pyod_detector needs PyOD: pip install pyod, "
                      "or pip install 'llsh_index[pyod]'") from exc

from .errors import ConfigError, InvalidInputError
from .sklearn import DetectorNotFittedError, LLSHDetector, _TypedSetParams


class LLSHPyODDetector(_TypedSetParams, BaseDetector):
    """Learnable-LSH outlier detector with PyOD's conventions.

    Parameters: as llsh_index.sklearn.LLSHDetector (n_tables, n_bits, mode, miss_value,
    contamination, train, iterations, lr, batch_size, queue_size, max_offset, n_neighbors, seed,
    n_probes, miss_probes, reduce, device, temperature, momentum, project_pcs, project_mean).
    fit(X, y=None, video_ids=None): y is ignored (a warning when it is given); video_ids give
    temporal positives and leave-videos-out calibration.

    Attributes after fit: decision_scores_ (held-out anomaly scores of the training rows),
    threshold_, labels_ (0 / 1), detector_ (the LLSHDetector it wraps), index_ (its
    LearnableLSHIndex, e.g. for index_.save), calibration_ ("leave-one-out", "leave-videos-out",
    or with train=True "cross-fitted" / "cross-fitted-videos": LLSHDetector's calibration_folds),
    n_features_in_.
    """

    # LLSHDetector's __init__: the same parameters, only stored (scikit-learn's rule, so clone() and
    # set_params() see them unchanged).  PyOD's BaseDetector.__init__ is not called: it checks
    # contamination with a plain ValueError at construction; fit checks it, as every other setting,
    # with ConfigError.
    __init__ = LLSHDetector.__init__

    def fit(self, X, y=None, video_ids=None):
        before = self.__dict__.copy()  # a fit that fails leaves the fitted state it found, whole
        try:
            return self._fit(X, y, video_ids)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def _fit(self, X, y, video_ids):
        c = self.contamination
        # PyOD's predict_confidence / predict_with_rejection take anything but a Python float or int for
        # a PyThresh object (np.float64 is a float; np.float32 is not)
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (float, int)):
            raise ConfigError(f"contamination: expected a float in (0, 0.5], got {type(c).__name__} {c!r}")
        if y is not None:  # PyOD's _set_n_classes(y) would size predict_proba's columns by y's classes
            warnings.warn("LLSHPyODDetector.fit: y is ignored (the detector is unsupervised: fit it on normal data)",
                          UserWarning, stacklevel=3)
        self._classes = 2  # predict_proba: [P(inlier), P(outlier)]
        params = {name: getattr(self, name) for name in LLSHDetector._get_param_names()}
        detector = LLSHDetector(**params).fit(X, video_ids=video_ids)  # every setting and X checked there
        self.detector_ = detector
        self.index_ = detector.index_
        self.calibration_ = detector.calibration_
        self.n_features_in_ = detector.n_features_in_
        self.decision_scores_ = np.asarray(detector.held_out_scores_, dtype=np.float64)
        self.threshold_ = float(np.percentile(self.decision_scores_, 100.0 * (1.0 - float(c))))
        miss = float(np.float32(detector.index_.default_miss_value()))  # as the float32 scores carry it
        # the quantile falls on rows that missed every table (LLSHDetector warned): a row that misses is
        # an outlier, not a tie.  Not with a miss value that real distances reach (a score there may hit)
        if self.threshold_ >= miss and detector.index_.misses_score_above_hits():
            self.threshold_ = float(np.nextafter(miss, 0.0))
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(int)
        self._mu = float(np.mean(self.decision_scores_))  # what PyOD's _process_decision_scores sets
        self._sigma = float(np.std(self.decision_scores_))
        return self

    def _check_fitted(self):
        if not hasattr(self, "detector_"):
            raise DetectorNotFittedError(f"This {type(self).__name__} instance is not fitted yet: call fit(X) "
                                         f"with normal training data first")

    def decision_function(self, X):
        """The anomaly score (min over tables of the mean code distance in the query's bucket, with the
        detector's probing and reduction): higher = more abnormal, as PyOD's detectors return."""
        self._check_fitted()
        return -self.detector_.score_samples(X)

    def predict(self, X, return_confidence=False):
        """1 for outliers (decision_function above threshold_), 0 for inliers; with
        return_confidence=True also PyOD's confidence in each label."""
        self._check_fitted()
        labels = (self.decision_function(X) > self.threshold_).astype(int)
        return (labels, self.predict_confidence(X)) if return_confidence else labels

    def predict_proba(self, X, method="linear", return_confidence=False):
        """PyOD's outlier probability, (n, 2) [P(inlier), P(outlier)]: "linear" scales the score by the
        training scores' range, "unify" (Kriegel et al.) through their mean and spread (with training
        scores all equal: 1 above them, 0 at or below)."""
        self._check_fitted()
        if method not in ("linear", "unify"):
            raise ConfigError(f"method: expected 'linear' or 'unify', got {method!r}")
        X = self.detector_._validate(X, reset=False)  # a list has no .shape for PyOD's method
        if method == "unify" and self._sigma == 0.0:  # PyOD's formula divides 0 by 0 at the mean: NaN
            p = (self.decision_function(X) > self._mu).astype(np.float64)
            probs = np.column_stack([1.0 - p, p])
            return (probs, self.predict_confidence(X)) if return_confidence else probs
        return super().predict_proba(X, method=method, return_confidence=return_confidence)

    def predict_confidence(self, X):
        self._check_fitted()
        return super().predict_confidence(X)

    def predict_with_rejection(self, X, *args, **kwargs):
        self._check_fitted()
        return super().predict_with_rejection(X, *args, **kwargs)

    def compute_rejection_stats(self, *args, **kwargs):
        self._check_fitted()
        n = len(self.decision_scores_)
        if int(n * float(self.contamination)) < 1:  # PyOD's bound needs one expected outlier among them
            raise InvalidInputError(f"rejection statistics: expected at least 1 / contamination = "
                                    f"{math.ceil(1 / float(self.contamination))} training rows, got {n}")
        return super().compute_rejection_stats(*args, **kwargs)
