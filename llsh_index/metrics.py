"""Frame-level evaluation protocol for video anomaly detection (VAD).

This module re-implements the evaluation used with the LLSH paper's public code
(``wayson20/LLSHforVAD``, files ``2-KNN/metrics.py`` and ``3-KMeans/metrics.py``,
called from ``1-LLSH/test.py``), with the reference's undocumented corner cases
made explicit and configurable.

Reference protocol, per test video (what ``cal_macro_auc`` / ``cal_micro_auc`` do):

1. The per-snippet anomaly scores are smoothed with
   ``scipy.ndimage.gaussian_filter1d(scores, sigma=12)`` (default ``mode="reflect"``,
   ``truncate=4.0``).  Smoothing happens *before* the scores are put on frames, so
   ``sigma`` is measured in snippets (one snippet per frame position in the reference,
   so in practice also in frames).
2. Micro only: the smoothed scores of each video are min-max normalised to [0, 1].
3. The (fewer) snippet scores are placed on the video's frames; frames not covered keep
   the value 0 (see :func:`snippet_to_frame_scores` for the exact offset).
4. Macro-AUC: ``roc_auc_score`` per video, then the unweighted mean over videos.
   Micro-AUC: all videos' frames are concatenated and one ``roc_auc_score`` is computed.

Differences from the reference, all deliberate and documented:

* Single-class videos (all frames normal or all anomalous) have no AUC.  The reference
  silently flips the label of frame 0 (``single_class="flip"`` here).  The default here
  is ``single_class="skip"``: such videos are left out of the macro mean, and every
  result reports how many there were (``AUCResult.n_single_class``).
* The reference places snippet scores on frames whenever the lengths differ, silently.
  Here the default ``align="exact"`` requires one score per frame and raises
  :class:`LengthMismatchError` otherwise; ``align="centre"`` opts in to the reference
  placement, which is for one score per snippet *start position* (the frames left over are
  one snippet span per video).  Scores of one snippet per K frames (I3D: K = 16) would leave
  most frames padded and measure chance; when the padded frames outnumber the covered ones
  over all videos, :class:`LengthMismatchError` says so (:func:`check_centre_alignment`).
* Micro: a video whose smoothed scores are constant cannot be min-max normalised.  The
  reference then falls back to the raw, unsmoothed scores (``3-KMeans``; the ``2-KNN``
  copy of the code indexes a dict there and would fail), i.e. in practice the video keeps
  its constant value.  Here the default ``constant_fill=None`` keeps the smoothed constant
  value (equal to the raw one for a constant series); a number replaces it instead.  The
  count is reported (``AUCResult.n_constant``).
* Bad input (missing videos, length mismatches, NaN/inf scores, labels other than 0/1,
  empty input) raises typed errors instead of ``assert``/``KeyError``.
* :func:`evaluate` reports a macro-AUC that is undefined (no video with both classes) as
  ``macro.auc = None`` with the reason in ``macro.undefined``, and still returns micro-AUC;
  :func:`macro_auc` alone raises :class:`EmptyInputError` there.  No AUC is ever NaN.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import roc_auc_score

from ._validation import huge_int_words
from .errors import NPZ_READ_ERRORS, InvalidDTypeError, InvalidInputError, LLSHError

__all__ = [
    "MetricsError",
    "MetricsTypeError",
    "EmptyInputError",
    "MissingVideoError",
    "LengthMismatchError",
    "NonFiniteScoreError",
    "InvalidLabelError",
    "SingleClassError",
    "LabelFileError",
    "AUCResult",
    "EvaluationResult",
    "CentreAlignmentWarning",
    "smooth_scores",
    "micro_roc_curve",
    "snippet_to_frame_scores",
    "check_centre_alignment",
    "macro_auc",
    "micro_auc",
    "evaluate",
    "load_labels",
    "check_frame_labels",
    "load_ped2_labels",
    "ped2_frame_counts",
]

SingleClassPolicy = Literal["skip", "flip", "error"]
AlignPolicy = Literal["exact", "centre"]
PadMode = Literal["constant", "edge"]

_SINGLE_CLASS_POLICIES = ("skip", "flip", "error")
_ALIGN_POLICIES = ("exact", "centre")
_PAD_MODES = ("constant", "edge")


# --------------------------------------------------------------------------- errors


class MetricsError(InvalidInputError):
    """Base class of the value errors raised by :mod:`llsh_index.metrics`.

    A subclass of :class:`llsh_index.errors.InvalidInputError` (so of ``LLSHError`` and
    ``ValueError``).
    """


class MetricsTypeError(InvalidDTypeError):
    """An argument has the wrong type (e.g. not a mapping, non-numeric array); a ``TypeError``."""


class EmptyInputError(MetricsError):
    """No videos, or a video with no scores/frames."""


class MissingVideoError(MetricsError):
    """A video has scores but no labels (or labels but no scores)."""


class LengthMismatchError(MetricsError):
    """A video's score count does not fit its frame count."""


class NonFiniteScoreError(MetricsError):
    """Scores contain NaN or +-inf."""


class InvalidLabelError(MetricsError):
    """Labels are not a 1-D array of 0/1 values."""


class SingleClassError(MetricsError):
    """An AUC is undefined because only one class is present (with ``single_class="error"``)."""


class LabelFileError(MetricsError):
    """A label file does not have the expected layout."""


class CentreAlignmentWarning(UserWarning):
    """:func:`snippet_to_frame_scores` was given so few scores that most of the video's frames are
    padding: scores of one snippet per K frames, not one per start position (see
    :func:`check_centre_alignment`)."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class AUCResult:
    """Outcome of :func:`macro_auc` or :func:`micro_auc`.

    Attributes:
        auc: the AUC in [0, 1]; ``None`` where it is undefined (only in :func:`evaluate`'s macro
            result, when no video has both classes; ``undefined`` says why).
        kind: ``"macro"`` or ``"micro"``.
        n_videos: number of videos evaluated (all videos given, including single-class ones).
        n_single_class: how many of them have a single label class (all 0 or all 1).
        single_class: the single-class policy used (macro); ``"include"`` for micro, where a
            single-class video simply contributes its frames to the pooled AUC.
        single_class_videos: names of the single-class videos, sorted.
        per_video: macro: AUC of every video that entered the mean (skipped videos are
            absent: every single-class video under ``"skip"``, a single-class video of one
            frame under ``"flip"``); micro: empty.
        n_constant: micro only: videos whose smoothed scores were constant (not normalised,
            see ``constant_fill``; within such a video every frame ranks alike, an AUC of 0.5).
        n_frames: number of frames that entered the AUC(s).
        constant_videos: micro only: the names of those ``n_constant`` videos, sorted.
        undefined: why ``auc`` is ``None``; empty when it is a number.
    """

    auc: float | None
    kind: str
    n_videos: int
    n_single_class: int
    single_class: str
    single_class_videos: tuple[str, ...] = ()
    per_video: dict[str, float] = field(default_factory=dict)
    n_constant: int = 0
    n_frames: int = 0
    constant_videos: tuple[str, ...] = ()
    undefined: str = ""


@dataclass(frozen=True)
class EvaluationResult:
    """Both AUCs of :func:`evaluate` (``macro.auc`` is ``None`` where macro-AUC is undefined)."""

    macro: AUCResult
    micro: AUCResult


# --------------------------------------------------------------------------- helpers


def _to_numpy(x: Any, what: str) -> np.ndarray:
    """numpy array from numpy / torch tensor / sequence, without importing torch."""
    if hasattr(x, "detach") and type(x).__module__.split(".")[0] == "torch":
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged lists and the like
        raise MetricsTypeError(f"{what}: expected a 1-D array-like, got {type(x).__name__}") from exc
    return arr


def _as_1d_numeric(x: Any, what: str, kind: str, empty: str, shape_error: type) -> np.ndarray:
    """The checks scores and labels share: a real numeric, 1-D, non-empty array."""
    arr = _to_numpy(x, what)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or arr.dtype == np.bool_
    ):
        raise MetricsTypeError(f"{what}: expected a {kind}, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise shape_error(f"{what}: expected a 1-D {'label ' if shape_error is InvalidLabelError else ''}array, "
                          f"got shape {arr.shape}")
    if arr.size == 0:
        raise EmptyInputError(f"{what}: expected at least 1 {empty}, got 0")
    return arr


def _as_score_array(x: Any, what: str) -> np.ndarray:
    arr = _as_1d_numeric(x, what, "real numeric array", "score", MetricsError)
    arr = arr.astype(np.float64, copy=True)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise NonFiniteScoreError(
            f"{what}: expected finite scores, got {idx.size} non-finite value(s) "
            f"(first at index {int(idx[0])}: {arr[idx[0]]!r})"
        )
    return arr


def check_frame_labels(x: Any, what: str = "labels") -> np.ndarray:
    """One video's frame labels (numeric or bool, 1-D) as a uint8 0/1 array.  Errors name `what`:
    MetricsTypeError for a non-numeric dtype, InvalidLabelError for another shape or a value other
    than 0 / 1 (NaN included), EmptyInputError for no frames."""
    arr = _as_1d_numeric(x, what, "numeric 0/1 array", "frame label", InvalidLabelError)
    ok = (arr == 0) | (arr == 1)
    if not ok.all():
        vals = np.unique(arr[~ok])[:5]
        raise InvalidLabelError(f"{what}: expected labels in {{0, 1}}, got value(s) {vals.tolist()}")
    return arr.astype(np.uint8)


def _check_mapping(x: Any, what: str) -> Mapping:
    if not isinstance(x, Mapping) and not hasattr(x, "files"):
        raise MetricsTypeError(f"{what}: expected a mapping video name -> array, got {type(x).__name__}")
    return x


def _keys(x: Any) -> list[str]:
    return list(x.files) if hasattr(x, "files") and not isinstance(x, Mapping) else list(x.keys())


def _match_videos(scores_by_video: Any, labels_by_video: Any, allow_subset: bool) -> list[str]:
    _check_mapping(scores_by_video, "scores_by_video")
    _check_mapping(labels_by_video, "labels_by_video")
    score_keys = _keys(scores_by_video)
    label_keys = set(_keys(labels_by_video))
    if not score_keys:
        raise EmptyInputError("scores_by_video: expected at least 1 video, got 0")
    missing = sorted((k for k in score_keys if k not in label_keys), key=str)  # key=str: names of mixed types
    if missing:
        raise MissingVideoError(
            f"{len(missing)} scored video(s) have no labels: {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} (labels cover {len(label_keys)} videos)"
        )
    if not allow_subset:
        extra = sorted(label_keys.difference(score_keys), key=str)
        if extra:
            raise MissingVideoError(
                f"expected scores for all {len(label_keys)} labelled videos, got {len(score_keys)}; "
                f"missing scores for {extra[:5]}{' ...' if len(extra) > 5 else ''} "
                "(pass allow_subset=True, llsh-index evaluate --subset, to evaluate only the scored videos)"
            )
    return sorted(score_keys, key=str)


_MAX_SIGMA = 1e6


def _finite_number(value: Any, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise MetricsTypeError(f"{what}: expected a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(float(value)):
        raise NonFiniteScoreError(f"{what}: expected a finite number, got {value!r}")
    return float(value)


def _check_sigma(sigma: float | None) -> float:
    if sigma is None:
        return 0.0
    if isinstance(sigma, (bool, np.bool_)):  # float(True) is 1.0: a switch passed for a width
        raise MetricsTypeError(f"sigma: expected a number >= 0 or None, got {sigma!r}")
    try:
        s = float(sigma)
    except OverflowError:  # an int beyond float64: a value out of range, not an untyped OverflowError
        raise MetricsError(f"sigma: expected a number from 0 to {_MAX_SIGMA:g} (a kernel of 8 sigma + 1 taps), got "
                           f"{huge_int_words(sigma)}") from None
    except (TypeError, ValueError) as exc:
        raise MetricsTypeError(f"sigma: expected a number >= 0 or None, got {sigma!r}") from exc
    if not math.isfinite(s) or s < 0:
        raise MetricsError(f"sigma: expected a finite number >= 0, got {sigma!r}")
    if s > _MAX_SIGMA:  # scipy builds a kernel of 8 sigma + 1 taps
        raise MetricsError(f"sigma: expected at most {_MAX_SIGMA:g} (a kernel of 8 sigma + 1 taps), got {sigma!r}")
    # scipy's kernel has one tap (radius int(4 sigma + 0.5) = 0) below 0.125: the identity, which is
    # returned as such (scipy itself divides by sigma**2, which underflows to 0 for sigma < 1e-154)
    return 0.0 if s < 0.125 else s


def _check_choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise MetricsError(f"{what}: expected one of {list(allowed)}, got {value!r}")
    return value


# --------------------------------------------------------------------------- public API


def smooth_scores(scores: Any, sigma: float | None = 12) -> np.ndarray:
    """Gaussian temporal smoothing, as in the reference protocol.

    ``scipy.ndimage.gaussian_filter1d(scores, sigma)`` with scipy's defaults
    (``mode="reflect"``, ``truncate=4.0``), computed in float64.  ``sigma=0`` or ``None``
    means no smoothing (scipy itself fails on ``sigma=0``).

    Returns a new float64 array of the same length.
    """
    arr = _as_score_array(scores, "scores")
    s = _check_sigma(sigma)
    if s == 0.0:
        return arr
    return _gaussian(arr, s)


def _gaussian(arr: np.ndarray, sigma: float) -> np.ndarray:
    """scipy's gaussian_filter1d; finite scores near float64's limit are smoothed scaled down (the
    filter is a weighted mean, so the result is within the scores' range), where the plain sum
    would overflow to inf."""
    peak = float(np.abs(arr).max()) if arr.size else 0.0
    if peak > 1e300:
        return gaussian_filter1d(arr / peak, sigma=sigma) * peak
    return gaussian_filter1d(arr, sigma=sigma)


def snippet_to_frame_scores(
    snippet_scores: Any,
    n_frames: int,
    *,
    pad: PadMode = "constant",
    pad_value: float = 0.0,
) -> np.ndarray:
    """Place per-snippet scores on the frames of a video, as the reference does.

    With ``n = len(snippet_scores)`` and ``d = n_frames - n`` (``d >= 1``), snippet ``j``
    is written to frame ``j + d // 2 + 1``, i.e. the scores occupy frames
    ``[d // 2 + 1, d // 2 + 1 + n)``; ``d // 2 + 1`` frames before them and
    ``d - d // 2 - 1`` frames after them are padding.  This is the reference's
    ``offset = dif_len // 2 + 1; vid_scores[offset:offset + len(val_score)] = val_score``.

    In the reference a snippet starting at frame ``s`` spans frames ``s .. s + d``
    (``d = (L - 1) * interval`` for ``L`` frames sampled every ``interval`` frames, hence
    ``n = n_frames - d`` snippets), so its exact centre is ``s + d / 2``: the reference
    placement is the centre rounded down, plus one frame.  It is kept as is so that
    numbers are comparable with the paper.

    Padding: ``pad="constant"`` (default, the reference) fills uncovered frames with
    ``pad_value`` (reference: 0, which ranks them as most normal when scores are
    non-negative distances); ``pad="edge"`` repeats the first/last snippet score.

    ``n == n_frames`` returns the scores unchanged (the reference's slice would overrun
    here and fail); ``n > n_frames`` raises :class:`LengthMismatchError`.

    The placement is for one score per snippet start position (``d`` is one snippet span).
    Scores of one snippet per K frames (I3D: K = 16) are not that: their ``n`` is about
    ``n_frames / K`` and most frames would be padding.  One video cannot tell that from a short
    video with a long snippet span, so here padding beyond the covered frames (``d > n``) is a
    :class:`CentreAlignmentWarning`; the AUC functions refuse it over all their videos
    (:func:`check_centre_alignment`).  Expand such scores over their frames instead.

    Returns a new float64 array of length ``n_frames``.
    """
    arr = _as_score_array(snippet_scores, "snippet_scores")
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)):
        raise MetricsTypeError(f"n_frames: expected an int, got {type(n_frames).__name__}")
    n_frames = int(n_frames)
    _check_choice(pad, _PAD_MODES, "pad")
    n = arr.size
    if n_frames < 1:
        raise EmptyInputError(f"n_frames: expected >= 1, got {n_frames}")
    if n > n_frames:
        raise LengthMismatchError(
            f"expected at most n_frames={n_frames} snippet scores, got {n}"
        )
    if n_frames - n > n:
        warnings.warn(f"snippet_to_frame_scores: {n} scores for {n_frames} frames leave {n_frames - n} frames padded, "
                      f"more than they cover; {_EXPAND_HINT}", CentreAlignmentWarning, stacklevel=2)
    return _place(arr, n_frames, pad, pad_value)


def _place(arr: np.ndarray, n_frames: int, pad: str, pad_value: float) -> np.ndarray:
    """snippet_to_frame_scores' placement, on checked arguments (n <= n_frames)."""
    n = arr.size
    if n == n_frames:
        return arr
    d = n_frames - n
    offset = d // 2 + 1
    if pad == "constant":
        out = np.full(n_frames, _finite_number(pad_value, "pad_value"), dtype=np.float64)
    else:
        out = np.empty(n_frames, dtype=np.float64)
        out[:offset] = arr[0]
        out[offset + n :] = arr[-1]
    out[offset : offset + n] = arr
    return out


def _frame_scores(
    name: str,
    raw: Any,
    labels: np.ndarray,
    sigma: float,
    align: str,
    pad: str,
    pad_value: float,
    normalise: bool,
    constant_fill: float | None = None,
) -> tuple[np.ndarray, bool, int]:
    """Smooth (-> normalise) -> align one video's scores; returns (frame scores, was_constant, score count)."""
    scores = _as_score_array(raw, f"scores of video {name!r}")
    n_frames = labels.size
    if align == "exact" and scores.size != n_frames:
        raise LengthMismatchError(
            f"video {name!r}: expected {n_frames} scores (one per labelled frame), got {scores.size}"
            " (pass align='centre', llsh-index evaluate --align centre, to place fewer snippet scores on the"
            " frames as the reference does)"
        )
    if scores.size > n_frames:
        raise LengthMismatchError(
            f"video {name!r}: expected at most {n_frames} scores (labelled frames), got {scores.size}"
        )
    smoothed = _gaussian(scores, sigma) if sigma > 0 else scores
    constant = False
    if normalise:
        lo, hi = smoothed.min(), smoothed.max()
        if hi > lo:
            smoothed = (smoothed - lo) / (hi - lo)
        else:
            constant = True
            if constant_fill is not None:
                smoothed = np.full_like(smoothed, constant_fill)  # checked by micro_auc
    # placed without snippet_to_frame_scores' one-video warning: _video_frames checks all videos together
    return _place(smoothed, n_frames, pad, pad_value), constant, scores.size


_EXPAND_HINT = ("centre alignment is for one score per snippet start position (the frames left over are one "
                "snippet span); for one score per K frames (I3D: K = 16) expand each score over its frames: "
                "`llsh-index import --snippet-frames K` then `llsh-index score` writes per-frame scores (evaluate "
                "them with --align exact), or repeat each score K times (np.repeat(scores, K)[:n_frames])")


def check_centre_alignment(n_scores: Mapping[str, int], n_frames: Mapping[str, int]) -> None:
    """Refuse ``align="centre"`` for scores that are not one per snippet start position.

    ``n_scores`` / ``n_frames``: each video's score count and labelled frame count.  The reference
    placement leaves one snippet span of frames per video as padding (15 for 16-frame snippets),
    a small share of any real video; scores of one snippet per K frames leave ``1 - 1/K`` of them
    (94% for I3D's K = 16), whose constant padding makes the AUC chance.  Rule: over all videos
    together, more padded frames than covered ones raises :class:`LengthMismatchError`.  Pooled,
    not per video: the real label files hold short videos (Avenue 36 frames, Corridor 94) that a
    legitimately long span (e.g. 31) leaves mostly padded, while over a dataset the span is a few
    percent of the frames; one score per 2 frames (half padded) is not caught.

    An error, not a warning: the AUC it would give is meaningless (about 0.5, chance, whatever the
    detector), a warning scrolls by in a benchmark's log, and the fix is one expansion.
    """
    if set(n_scores) != set(n_frames):
        raise MissingVideoError(f"n_scores / n_frames: expected the same videos, got "
                                f"{sorted(set(n_scores) ^ set(n_frames), key=str)[:5]} in only one of them")
    padded = sum(max(int(n_frames[v]) - int(n_scores[v]), 0) for v in n_frames)
    covered = sum(min(int(n_scores[v]), int(n_frames[v])) for v in n_frames)
    if padded <= covered:
        return
    short = max(n_frames, key=lambda v: int(n_frames[v]) - int(n_scores[v]))  # the worst video, as an example
    raise LengthMismatchError(
        f"align='centre': expected scores covering most frames (one per snippet start position), got "
        f"{covered} covered and {padded} padded frames of {padded + covered} in {len(n_frames)} video(s), "
        f"about {(padded + covered) / max(covered, 1):.1f} frames per score (e.g. video {short!r}: "
        f"{int(n_scores[short])} scores for {int(n_frames[short])} frames); the padding would score as one "
        f"value and the AUC measure little else; {_EXPAND_HINT}"
    )


def _video_frames(scores_by_video, labels_by_video, sigma, align, pad, pad_value, allow_subset, normalise,
                  constant_fill=None):
    """The checks and per-video preparation both AUCs share: (name, labels, frame scores, constant) of
    every video, in sorted name order (see :func:`_frame_scores`)."""
    s = _check_sigma(sigma)
    _check_choice(align, _ALIGN_POLICIES, "align")
    _check_choice(pad, _PAD_MODES, "pad")
    out, counts = [], {}
    for name in _match_videos(scores_by_video, labels_by_video, allow_subset):
        labels = check_frame_labels(labels_by_video[name], f"labels of video {name!r}")
        frame_scores, constant, counts[name] = _frame_scores(name, scores_by_video[name], labels, s, align, pad,
                                                             pad_value, normalise=normalise,
                                                             constant_fill=constant_fill)
        out.append((name, labels, frame_scores, constant))
    if align == "centre":
        check_centre_alignment(counts, {name: labels.size for name, labels, _, _ in out})
    return out


def macro_auc(
    scores_by_video: Mapping[str, Any],
    labels_by_video: Mapping[str, Any],
    sigma: float | None = 12,
    *,
    single_class: SingleClassPolicy = "skip",
    align: AlignPolicy = "exact",
    pad: PadMode = "constant",
    pad_value: float = 0.0,
    allow_subset: bool = False,
) -> AUCResult:
    """Macro-AUC: ``roc_auc_score`` of every video, then the unweighted mean.

    Each video's scores are smoothed (:func:`smooth_scores`), then placed on its frames
    (``align="exact"``: one score per frame required; ``align="centre"``:
    :func:`snippet_to_frame_scores` with ``pad``/``pad_value``).

    Single-class videos (every frame 0, or every frame 1) have no AUC of their own:

    * ``"skip"`` (default): left out of the mean.
    * ``"flip"``: the reference behaviour: the label of frame 0 is flipped (on a copy)
      and the AUC computed anyway.  Beware: the result then depends only on how the score
      of frame 0 ranks, which with ``align="centre"`` is always a padded frame (score
      ``pad_value``); e.g. an all-anomalous video with positive scores and zero padding
      gets an AUC close to 1.0 whatever the detector does.  A video of one frame keeps one
      class after the flip (the reference's ``roc_auc_score`` returns NaN, which became its
      macro-AUC): it is skipped as under ``"skip"`` (named in ``single_class_videos``,
      absent from ``per_video``).
    * ``"error"``: raise :class:`SingleClassError`.

    Videos: every key of ``scores_by_video`` must be in ``labels_by_video``; unless
    ``allow_subset=True`` the converse is required as well (the reference evaluates the
    scored videos only).

    Raises :class:`EmptyInputError` when no video is left to average (:func:`evaluate` reports
    macro-AUC as undefined there instead).
    """
    _check_choice(single_class, _SINGLE_CLASS_POLICIES, "single_class")
    videos = _video_frames(scores_by_video, labels_by_video, sigma, align, pad, pad_value, allow_subset,
                           normalise=False)
    result = _macro(videos, single_class)
    if result.auc is None:
        raise EmptyInputError(
            f"macro-AUC: expected at least 1 video with both classes, got 0 of {len(videos)} "
            f"({result.n_single_class} single-class video(s) skipped"
            f"{', of one frame: no class to flip against' if single_class == 'flip' else ''})"
        )
    return result


def _macro(videos, single_class: str) -> AUCResult:
    """macro_auc's result on prepared videos; ``auc=None`` with the reason when no video has an AUC."""
    per_video: dict[str, float] = {}
    single: list[str] = []
    n_frames = 0
    for name, labels, frame_scores, _ in videos:
        if labels.min() == labels.max():
            single.append(name)
            # one frame: flipping frame 0 leaves one class again (roc_auc_score: NaN), so no AUC either way
            if single_class == "skip" or (single_class == "flip" and labels.size == 1):
                continue
            if single_class == "error":
                raise SingleClassError(
                    f"video {name!r}: expected both normal (0) and anomalous (1) frames, got only "
                    f"label {int(labels[0])} in {labels.size} frames (use single_class='skip' or 'flip')"
                )
            labels = labels.copy()
            labels[0] = 1 - labels[0]
        per_video[name] = float(roc_auc_score(labels, frame_scores))
        n_frames += labels.size

    undefined = ""
    if not per_video:
        undefined = (f"no video has both normal and anomalous frames: all {len(videos)} single-class, skipped"
                     f"{' (one frame each: no class to flip against)' if single_class == 'flip' else ''}")
    return AUCResult(
        auc=float(np.mean(list(per_video.values()))) if per_video else None,
        kind="macro",
        n_videos=len(videos),
        n_single_class=len(single),
        single_class=single_class,
        single_class_videos=tuple(single),
        per_video=per_video,
        n_frames=n_frames,
        undefined=undefined,
    )


def micro_auc(
    scores_by_video: Mapping[str, Any],
    labels_by_video: Mapping[str, Any],
    sigma: float | None = 12,
    *,
    align: AlignPolicy = "exact",
    pad: PadMode = "constant",
    pad_value: float = 0.0,
    constant_fill: float | None = None,
    allow_subset: bool = False,
) -> AUCResult:
    """Micro-AUC: one ``roc_auc_score`` over all frames of all videos.

    Per video: smooth (:func:`smooth_scores`) -> min-max normalise to [0, 1] -> place on
    frames (``align``, padding with ``pad_value`` *after* normalisation, as the reference).
    A video whose smoothed scores are constant cannot be normalised: with
    ``constant_fill=None`` (default, as the reference) it keeps its constant value, else
    all its scores become ``constant_fill``; such videos are counted in ``n_constant``.
    Videos are concatenated in sorted name order.

    Single-class videos are included (they contribute frames); their number is reported.
    Raises :class:`SingleClassError` if the pooled frames contain a single class.
    """
    cat_scores, cat_labels, videos, single, constant = _pooled_frames(
        scores_by_video, labels_by_video, sigma, align, pad, pad_value, constant_fill, allow_subset, "micro-AUC")
    auc = float(roc_auc_score(cat_labels, cat_scores))
    return AUCResult(
        auc=auc,
        kind="micro",
        n_videos=len(videos),
        n_single_class=len(single),
        single_class="include",
        single_class_videos=tuple(single),
        per_video={},
        n_constant=len(constant),
        n_frames=int(cat_labels.size),
        constant_videos=tuple(constant),
    )


def _pooled_frames(scores_by_video, labels_by_video, sigma, align, pad, pad_value, constant_fill, allow_subset,
                   what: str):
    """Every video's smoothed, min-max normalised frame scores and labels, concatenated in sorted name
    order (micro-AUC's frames); also the videos, the single-class ones and the constant ones."""
    if constant_fill is not None:
        constant_fill = _finite_number(constant_fill, "constant_fill")
    videos = _video_frames(scores_by_video, labels_by_video, sigma, align, pad, pad_value, allow_subset,
                           normalise=True, constant_fill=constant_fill)
    single = [name for name, labels, _, _ in videos if labels.min() == labels.max()]
    constant = [name for name, _, _, is_constant in videos if is_constant]
    cat_labels = np.concatenate([labels for _, labels, _, _ in videos])
    if cat_labels.min() == cat_labels.max():
        raise SingleClassError(
            f"{what}: expected both classes among the {cat_labels.size} pooled frames, "
            f"got only label {int(cat_labels[0])}"
        )
    return np.concatenate([f for _, _, f, _ in videos]), cat_labels, videos, single, constant


def micro_roc_curve(
    scores_by_video: Mapping[str, Any],
    labels_by_video: Mapping[str, Any],
    sigma: float | None = 12,
    *,
    align: AlignPolicy = "exact",
    pad: PadMode = "constant",
    pad_value: float = 0.0,
    constant_fill: float | None = None,
    allow_subset: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve whose area :func:`micro_auc` reports: ``(fpr, tpr, thresholds)`` of
    ``sklearn.metrics.roc_curve`` over the same pooled, smoothed, per-video min-max
    normalised frame scores (the same arguments and checks)."""
    from sklearn.metrics import roc_curve

    cat_scores, cat_labels, _, _, _ = _pooled_frames(
        scores_by_video, labels_by_video, sigma, align, pad, pad_value, constant_fill, allow_subset, "micro ROC")
    fpr, tpr, thresholds = roc_curve(cat_labels, cat_scores)
    return fpr, tpr, thresholds


def evaluate(
    scores_by_video: Mapping[str, Any],
    labels_by_video: Mapping[str, Any],
    sigma: float | None = 12,
    *,
    single_class: SingleClassPolicy = "skip",
    align: AlignPolicy = "exact",
    pad: PadMode = "constant",
    pad_value: float = 0.0,
    constant_fill: float | None = None,
    allow_subset: bool = False,
) -> EvaluationResult:
    """Macro- and micro-AUC with the same settings (see :func:`macro_auc`, :func:`micro_auc`).

    Where no video has both classes (e.g. ``allow_subset=True`` with one all-normal and one
    all-anomalous video) macro-AUC is undefined: ``macro.auc`` is ``None`` and ``macro.undefined``
    says why, while micro-AUC, defined on the pooled frames, is still returned.
    """
    _check_choice(single_class, _SINGLE_CLASS_POLICIES, "single_class")
    common = dict(align=align, pad=pad, pad_value=pad_value, allow_subset=allow_subset)
    videos = _video_frames(scores_by_video, labels_by_video, sigma, align, pad, pad_value, allow_subset,
                           normalise=False)
    macro = _macro(videos, single_class)
    # micro raises where the pooled frames hold one class: then neither AUC is defined
    micro = micro_auc(scores_by_video, labels_by_video, sigma, constant_fill=constant_fill, **common)
    return EvaluationResult(macro=macro, micro=micro)


# --------------------------------------------------------------------------- label files


def load_labels(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a frame-label ``.npz`` (video name -> per-frame 0/1 array), without pickle.

    This is the format of the label files published with the LLSH code
    (``Avenue_gt.npz``, ``ST_gt.npz``, ``Corridor_gt.npz``).  The stored dtype varies
    between files (uint8, int64, float64); every array is checked to be 1-D with values
    in {0, 1} and returned as ``uint8``.  Keys are returned in sorted order.
    """
    from .io import refuse_non_regular

    refuse_non_regular(path, LabelFileError, "a label .npz")
    try:
        z = np.load(os.fspath(path), allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise LabelFileError(f"{os.fspath(path)}: expected an .npz archive, got a single array")
        with z:
            names = sorted(z.files)
            if not names:
                raise EmptyInputError(f"{os.fspath(path)}: expected at least 1 video, got 0")
            return {k: check_frame_labels(z[k], f"{os.fspath(path)}[{k!r}]") for k in names}
    except NPZ_READ_ERRORS as exc:
        if isinstance(exc, (LLSHError, FileNotFoundError)):
            raise
        from .io import npz_refusal

        raise LabelFileError(f"{os.fspath(path)}: not a readable label npz ({npz_refusal(path, exc)})") from exc


def ped2_frame_counts(frames_dir: str | os.PathLike, ext: str = ".jpg") -> dict[str, int]:
    """Frame count of every video folder of a UCSD Ped2 split (e.g. ``ped2/testing/frames``)."""
    root = os.fspath(frames_dir)
    counts = {}
    for name in sorted(os.listdir(root)):
        p = os.path.join(root, name)
        if os.path.isdir(p):
            counts[name] = sum(1 for f in os.listdir(p) if f.lower().endswith(ext))
    if not counts:
        raise EmptyInputError(f"{root}: expected video folders, got none")
    return counts


# Frames of UCSD Ped2's 12 test videos (Test001 .. Test012), in order: what ped2.mat's ranges index.
UCSD_PED2_TEST_FRAMES = (180, 180, 150, 180, 150, 180, 180, 180, 120, 150, 180, 180)


# The end of load_ped2_labels' error for names without a video number: the Python API's way out (the
# command line, which has no such argument, swaps it for its own).
_PED2_SEQUENCE_HINT = " (or pass the frame counts as a sequence, in video order)"


def _video_numbers(names: Sequence[Any], n_videos: int) -> dict[Any, int] | None:
    """name -> video number (1-based) when every name ends in an ASCII number from 1 to `n_videos`
    ('7', '07', 'Test007', 'video_7'), each number once; else None."""
    numbers = {}
    for name in names:
        m = re.search(r"[0-9]+\Z", name) if isinstance(name, str) else None  # [0-9]: ASCII, not str.isdigit()
        if m is None or not 1 <= int(m.group()) <= n_videos:
            return None
        numbers[name] = int(m.group())
    return numbers if len(set(numbers.values())) == len(numbers) else None


def load_ped2_labels(
    mat_path: str | os.PathLike,
    frame_counts: Sequence[int] | Mapping[str, int] | None = None,
    *,
    allow_subset: bool = True,
) -> dict[str, np.ndarray]:
    """Frame labels of UCSD Ped2 test videos from ``ped2.mat``.

    ``scipy.io.loadmat(mat_path)["gt"]`` is a (1, V) cell array; entry ``i`` is a
    ``2 x R`` array whose columns are ``[first; last]`` anomalous frame ranges of test
    video ``i + 1``, 1-based and inclusive (Ped2 has R = 1).  Frame ``f`` (0-based, i.e.
    file ``f:03d.jpg``) is anomalous iff ``first - 1 <= f <= last - 1``.

    ``frame_counts``: the number of frames of each test video, either a sequence in video
    order (names become ``"01"``, ``"02"``, ...) or a mapping name -> count (e.g. from
    :func:`ped2_frame_counts`) whose names are matched to the file's videos by the number they
    end in: ``"01"``, ``"1"``, ``"Test001"`` and ``"video_1"`` are video 1 (natural order:
    ``"video_10"`` is video 10, not the second name in string order).  Every name must end in
    the number of a video of the file, each number once; other names are refused
    (:class:`LengthMismatchError`: a sequence gives the order instead).  A mapping may name some
    of the videos (``{"01": 180, "03": 150}``, as ``llsh-index extract --videos`` names them):
    those are labelled, or with ``allow_subset=False`` refused with
    :class:`MissingVideoError` naming the videos left out.  ``None``: UCSD Ped2's own counts
    (:data:`UCSD_PED2_TEST_FRAMES`; the file must hold 12 videos).

    Returns ``{name: uint8 array of length frame_count}``.
    """
    import scipy.io

    from .io import refuse_non_regular

    mat_path = os.fspath(mat_path)
    refuse_non_regular(mat_path, LabelFileError, "a MATLAB label file")
    try:
        mat = scipy.io.loadmat(mat_path)
    except Exception as exc:
        raise LabelFileError(f"{mat_path}: cannot be read as a MATLAB file ({exc})") from exc
    if "gt" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise LabelFileError(f"{mat_path}: expected a variable 'gt', got {keys}")
    gt = np.asarray(mat["gt"])
    if gt.dtype != object or gt.ndim != 2 or 1 not in gt.shape:
        raise LabelFileError(f"{mat_path}: expected 'gt' to be a (1, V) cell array, got {gt.dtype} {gt.shape}")
    entries = list(gt.ravel())

    if frame_counts is None:
        if len(entries) != len(UCSD_PED2_TEST_FRAMES):
            raise LengthMismatchError(f"{mat_path}: UCSD Ped2's frame counts are for its {len(UCSD_PED2_TEST_FRAMES)} "
                                      f"test videos, the file holds {len(entries)}; pass frame_counts")
        frame_counts = UCSD_PED2_TEST_FRAMES
    if isinstance(frame_counts, Mapping):
        names = sorted(frame_counts, key=str)
        counts = [frame_counts[n] for n in names]
        # by the number a name ends in, never by its place among the sorted names: 'video_1' ..
        # 'video_12' sort 'video_10' second, and were labelled with video 2's ranges
        numbers = _video_numbers(names, len(entries))
        if numbers is None:
            unmatched = [n for n in names if _video_numbers([n], len(entries)) is None]
            raise LengthMismatchError(
                f"{mat_path}: expected videos named by number: names are matched to the file's {len(entries)} "
                f"videos by the number they end in ('01', '1', 'Test001', 'video_1' are video 1), each from 1 to "
                f"{len(entries)} and each once; got {len(names)} names"
                + (f", {len(unmatched)} not ending in such a number ({unmatched[:5]}"
                   f"{' ...' if len(unmatched) > 5 else ''})" if unmatched else ", a number used twice")
                + _PED2_SEQUENCE_HINT
            )
        if not allow_subset and len(names) < len(entries):
            left_out = [f"{k:02d}" for k in sorted(set(range(1, len(entries) + 1)) - set(numbers.values()))]
            raise MissingVideoError(
                f"{mat_path}: expected scores for all {len(entries)} labelled videos, got {len(names)}; missing "
                f"scores for video(s) {', '.join(left_out[:8])}{' ...' if len(left_out) > 8 else ''}"
                " (pass allow_subset=True, --subset on the command line, to evaluate only the scored videos)"
            )
        picked = [entries[numbers[n] - 1] for n in names]
    elif isinstance(frame_counts, (Sequence, np.ndarray)) and not isinstance(frame_counts, str):
        counts = list(frame_counts)
        names = [f"{i + 1:02d}" for i in range(len(counts))]
        if len(counts) != len(entries):
            raise LengthMismatchError(
                f"{mat_path}: expected frame counts for {len(entries)} videos (or a mapping for some of them "
                f"named by number, '01' .. '{len(entries):02d}'), got {len(counts)}"
            )
        picked = entries
    else:
        raise MetricsTypeError(
            f"frame_counts: expected a sequence of ints or a mapping name -> int, got {type(frame_counts).__name__}"
        )

    out: dict[str, np.ndarray] = {}
    for name, count, entry in zip(names, counts, picked):
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise MetricsTypeError(f"frame count of video {name!r}: expected an int >= 1, got {count!r}")
        count = int(count)
        try:
            ranges = np.asarray(entry).astype(np.int64)  # stored as uint8 in ped2.mat
        except (TypeError, ValueError) as exc:
            raise LabelFileError(f"{mat_path}: video {name!r}: expected integer frame ranges ({exc})") from exc
        if ranges.ndim != 2 or ranges.shape[0] != 2:
            raise LabelFileError(f"{mat_path}: video {name!r}: expected a 2 x R range array, got {ranges.shape}")
        labels = np.zeros(count, dtype=np.uint8)
        for first, last in ranges.T:
            if not 1 <= first <= last <= count:
                raise LengthMismatchError(
                    f"{mat_path}: video {name!r}: anomalous range [{first}, {last}] (1-based) does not fit "
                    f"{count} frames"
                )
            labels[first - 1 : last] = 1
        out[name] = labels
    return out
