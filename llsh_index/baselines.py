"""Exhaustive baselines of the LLSH paper, through faiss: K-nearest-neighbours and K-means.

Both follow the authors' public code (``wayson20/LLSHforVAD``):

* ``2-KNN``: distance ``1 - cos(x, y)`` computed as ``1 - <x / |x|, y / |y|>`` between a
  test feature and *every* training feature; the anomaly score of a test feature is the
  mean of its ``K`` smallest distances (``sort`` then ``[:, :K].mean()``).
  :class:`KNNScorer` with ``metric="cosine"`` does exactly this, with faiss
  ``IndexFlatIP`` on L2-normalised features (top-``k`` inner products = ``k`` smallest
  cosine distances).
* ``3-KMeans``: ``sklearn.cluster.KMeans`` on the raw (not normalised) training features;
  the anomaly score is the Euclidean (not squared) distance ``torch.norm(x - c, p=2)`` to
  the nearest centre.  :class:`KMeansScorer` trains with ``faiss.Kmeans`` instead (see its
  docstring for the differences) and scores with the same Euclidean distance.

In the reference every snippet has several spatial crops and the snippet score is the mean
of the crops' scores.  The scorers here score one feature row at a time; averaging the
crops of a snippet is left to the caller (``scores.reshape(-1, n_crops).mean(1)``).

Both scorers satisfy :class:`AnomalyScorer`, the interface the benchmarks use for the baselines.
``LearnableLSHIndex`` does not: its ``fit`` trains the hash layers only (``add`` builds the
tables), and its multiplication count depends on the buckets it visits (``last_n_compared``).
Persistence uses no pickle: an ``.npz`` of plain arrays plus a JSON header (format name
and version) stored as a unicode array, written atomically.

faiss-gpu is used when the installed faiss has GPU support and a GPU is visible
(``use_gpu=None``), faiss-cpu otherwise; the code path is the same apart from the index
constructor.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

try:
    import faiss
except ImportError as exc:  # faiss is an optional dependency (extra "baselines")
    raise ImportError(
        "llsh_index.baselines needs faiss: pip install faiss-cpu (or faiss-gpu), "
        "or pip install 'llsh_index[baselines]'"
    ) from exc

from . import io as llsh_io
from ._validation import PATH_TYPES, unmasked
from .errors import (NPZ_READ_ERRORS, ConfigError, CudaUnavailableError, IndexFormatError, IndexStateError, InvalidDTypeError,
                     InvalidInputError, LLSHError, NotFittedError)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GPU_MAX_K",
    "LLSHError",
    "ConfigError",
    "CudaUnavailableError",
    "InvalidDTypeError",
    "InvalidInputError",
    "EmptyInputError",
    "ShapeError",
    "DimensionMismatchError",
    "NonFiniteInputError",
    "NotFittedError",
    "ScorerFormatError",
    "AnomalyScorer",
    "KNNScorer",
    "KMeansScorer",
    "load_scorer",
    "faiss_gpu_available",
]

FORMAT_NAME = "llsh_index.baselines"
FORMAT_VERSION = 2  # 2: an l2 KNNScorer file also holds the shift its features were stored minus
#: Largest k that faiss GPU brute-force search supports (faiss-cpu has no such limit).
GPU_MAX_K = 2048
KNN_DEFAULT_K = 1024  # the reference evaluates k in 1, 32, ..., 1024, 2048

_NORMALISE_CHUNK = 65536
_SHIFT_CHUNK = 1 << 22  # elements per float64 temporary of _minus_shift


def _shift_rows(dim: int) -> int:
    """Rows per float64 temporary of _SHIFT_CHUNK elements (at least one)."""
    return max(1, _SHIFT_CHUNK // max(1, dim))
_RECENTRE_GAIN = 0.01  # KNNScorer (l2) moves its shift when that cuts the rows' mean squared norm by more


# --------------------------------------------------------------------------- errors
# Built on llsh_index.errors, so ``except LLSHError`` / ``except ValueError`` catch them.
# Also raised unchanged from there: ConfigError (bad constructor argument, k or n_clusters
# larger than the training set), InvalidDTypeError (a TypeError: not an array, non-numeric
# dtype), NotFittedError (a RuntimeError) and CudaUnavailableError (use_gpu=True, no GPU).


class EmptyInputError(InvalidInputError):
    """A feature matrix with no rows or no columns."""


class ShapeError(InvalidInputError):
    """A feature matrix that is not 2-D, or ``video_ids`` of the wrong length."""


class DimensionMismatchError(InvalidInputError):
    """Feature dimension differs from the one the scorer was fitted with."""


class NonFiniteInputError(InvalidInputError):
    """Features contain NaN / inf (or zero vectors where cosine needs a direction)."""


class ScorerFormatError(IndexFormatError):
    """A saved file is not a scorer file of the expected kind / version."""


# --------------------------------------------------------------------------- interface


@runtime_checkable
class AnomalyScorer(Protocol):
    """Interface of the baselines (KNNScorer, KMeansScorer): fit replaces, add extends, score.

    Higher score = more anomalous.  ``fit`` replaces the reference (training) set, ``add``
    extends it, ``score`` returns one float32 score per query row.
    """

    def fit(self, features: Any, video_ids: Any = None) -> "AnomalyScorer":
        """Build the model from normal training features ``(N, d)``; returns ``self``."""
        ...

    def add(self, features: Any) -> Any:
        """Add more normal training features ``(n, d)`` (the return value is not used)."""
        ...

    def score(self, queries: Any) -> np.ndarray:
        """Anomaly scores of ``queries`` ``(M, d)``: float32 array ``(M,)``."""
        ...

    def save(self, path: str | os.PathLike) -> Any:
        """Write the fitted model to ``path`` (no pickle, atomic; the return value is not used)."""
        ...

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AnomalyScorer":
        """Read a model written by :meth:`save`."""
        ...

    def count_multiplications(self, n_queries: int) -> int:
        """Scalar multiplications done to score ``n_queries`` queries (testing phase).

        The baselines' cost is the same for every query, so this is ``n_queries`` times
        their ``n_multiplications_per_query`` property.  (That property is deliberately
        not part of the protocol: ``isinstance(x, AnomalyScorer)`` evaluates protocol
        properties on Python 3.11, which would fail on unfitted scorers.)
        """
        ...


# --------------------------------------------------------------------------- helpers


def faiss_gpu_available() -> bool:
    """True when the installed faiss has GPU support and at least one GPU is visible."""
    if not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        return faiss.get_num_gpus() > 0
    except Exception:  # pragma: no cover - broken driver
        return False


def _resolve_use_gpu(use_gpu: bool | None) -> bool:
    if use_gpu is not None and not isinstance(use_gpu, (bool, np.bool_)):  # "no" would count as True
        raise ConfigError(f"use_gpu: expected True, False or None, got {use_gpu!r}")
    if use_gpu is None:
        return faiss_gpu_available()
    if use_gpu and not faiss_gpu_available():
        raise CudaUnavailableError("use_gpu=True: expected faiss with GPU support and a visible GPU, got none")
    return bool(use_gpu)


def _as_features(x: Any, what: str, dim: int | None = None) -> np.ndarray:
    """Validate and convert to a C-contiguous float32 ``(n, d)`` matrix (numpy or torch)."""
    x = unmasked(x, what)
    if hasattr(x, "detach") and type(x).__module__.split(".")[0] == "torch":
        if str(x.layout) != "torch.strided":  # sparse: .numpy() raises a bare TypeError
            raise InvalidDTypeError(f"{what}: expected a dense tensor, got layout {x.layout} (call .to_dense())")
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple)):
            try:
                x = np.asarray(x)
            except ValueError as exc:  # ragged nested lists
                raise ShapeError(f"{what}: expected a 2-D array (n, d), got a ragged {type(x).__name__}") from exc
        else:
            raise InvalidDTypeError(
                f"{what}: expected a numpy array or torch tensor, got {type(x).__name__}"
            )
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InvalidDTypeError(f"{what}: expected a real float or integer dtype, got {x.dtype}")
    if x.ndim != 2:
        raise ShapeError(f"{what}: expected a 2-D array (n, d), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise EmptyInputError(f"{what}: expected at least 1 row and 1 column, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise DimensionMismatchError(f"{what}: expected dimension {dim}, got {x.shape[1]}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, reported below
        out = np.ascontiguousarray(x, dtype=np.float32)
    for s in range(0, out.shape[0], _NORMALISE_CHUNK):  # in chunks: no n x d boolean copy of a large (memmapped) set
        finite = np.isfinite(out[s : s + _NORMALISE_CHUNK])
        if not finite.all():
            row = s + int(np.flatnonzero(~finite.all(axis=1))[0])
            n_bad = int((~np.isfinite(out)).sum())
            raise NonFiniteInputError(
                f"{what}: expected finite values (in float32), got {n_bad} non-finite value(s), first in row {row}"
            )
    return out


def _minus_shift(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """float32 x - shift for a faiss L2 search (KNNScorer's rows, KMeansScorer's centres, their
    queries): the difference in float64, rounded once, in row chunks of bounded float64 temporaries."""
    out = np.empty(x.shape, dtype=np.float32)
    rows = _shift_rows(x.shape[1])
    for s in range(0, x.shape[0], rows):
        np.subtract(x[s : s + rows], shift, out=out[s : s + rows], casting="same_kind")
    return out


def _check_l2_range(x: np.ndarray, what: str) -> np.ndarray:
    """Rows faiss can take squared L2 distances of in float32: |x| up to sqrt(float32 max) / (2 sqrt(d)).
    Beyond it the distances overflow to inf: faiss K-means aborts the process ("invalid cluster
    assignment"), assignments come back -1 and k-NN finds no neighbour."""
    limit = math.sqrt(float(np.finfo(np.float32).max)) / (2.0 * math.sqrt(x.shape[1]))
    for s in range(0, x.shape[0], _NORMALISE_CHUNK):  # in chunks: no |x| copy of a large training set
        chunk = x[s : s + _NORMALISE_CHUNK]
        peak = np.maximum(chunk.max(axis=1), -chunk.min(axis=1))
        if not (peak <= limit).all():
            row = int(np.flatnonzero(~(peak <= limit))[0])
            raise NonFiniteInputError(
                f"{what}: row {s + row} has values up to {peak[row]:.3g}, too large for float32 squared L2 "
                f"distances (limit {limit:.3g} at d={x.shape[1]}); rescale the features"
            )
    return x


def _l2_normalise(x: np.ndarray, what: str) -> np.ndarray:
    """Row-wise L2 normalisation (computed in float64), float32 output; zero rows are an error."""
    out = np.empty_like(x, dtype=np.float32)
    for s in range(0, x.shape[0], _NORMALISE_CHUNK):
        chunk = x[s : s + _NORMALISE_CHUNK].astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
        zero = norms == 0
        if zero.any():
            row = s + int(np.flatnonzero(zero)[0])
            raise NonFiniteInputError(
                f"{what}: cosine distance needs non-zero vectors, got a zero vector in row {row}"
            )
        out[s : s + _NORMALISE_CHUNK] = chunk / norms[:, None]
    return out


def _check_video_ids(video_ids: Any, n: int) -> None:
    if video_ids is None:
        return
    try:
        m = len(video_ids)
    except TypeError as exc:
        raise ShapeError(f"video_ids: expected a sequence of length {n}, got {type(video_ids).__name__}") from exc
    if m != n:
        raise ShapeError(f"video_ids: expected length {n} (one per feature row), got {m}")


def _check_positive_int(value: Any, what: str, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{what}: expected an int, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ConfigError(f"{what}: expected {f'{minimum}..{maximum}' if maximum is not None else f'>= {minimum}'}"
                          f", got {value}")
    return int(value)


_INT32_MAX = 2 ** 31 - 1  # faiss's ClusteringParameters are C ints: larger values fail in SWIG at fit()


def _make_flat_index(dim: int, inner_product: bool, use_gpu: bool) -> tuple[Any, Any]:
    """(index, gpu resources or None); the resources must live as long as the index."""
    if use_gpu:
        res = faiss.StandardGpuResources()
        cls = faiss.GpuIndexFlatIP if inner_product else faiss.GpuIndexFlatL2
        return cls(res, dim), res
    cls = faiss.IndexFlatIP if inner_product else faiss.IndexFlatL2
    return cls(dim), None


def _atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` written atomically (llsh_index.io.atomic_write), at exactly ``path``."""
    from .io import atomic_write

    with atomic_write(path) as f:
        np.savez(f, **arrays)


def _header_array(scorer: str, params: dict, **extra: Any) -> np.ndarray:
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "scorer": scorer, "params": params}
    header.update(extra)
    return np.array(json.dumps(header, sort_keys=True))


def _read_file(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    if not isinstance(path, PATH_TYPES):  # np.load would take an int as an open file descriptor
        raise ScorerFormatError(f"expected a file path (str or os.PathLike), got {type(path).__name__} {path!r}")
    path = os.fsdecode(path)
    llsh_io.refuse_non_regular(path, ScorerFormatError, "a scorer file")
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except NPZ_READ_ERRORS as exc:
        why = llsh_io.npz_refusal(path, exc)
        if llsh_io.is_container(path):
            why += ": load it with LearnableLSHIndex.load"
        raise ScorerFormatError(f"{path}: not a scorer file ({why})") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ScorerFormatError(f"{path}: expected an .npz archive, got a single array")
    with z:
        try:
            arrays = {k: z[k] for k in z.files}
        except NPZ_READ_ERRORS as exc:
            raise ScorerFormatError(f"{path}: damaged archive ({type(exc).__name__}: {exc})") from exc
    if "header" not in arrays:
        raise ScorerFormatError(f"{path}: expected a 'header' entry, got entries {sorted(arrays)}")
    raw = arrays.pop("header")
    if raw.dtype.kind != "U" or raw.ndim != 0:
        raise ScorerFormatError(f"{path}: expected a 0-d unicode header, got {raw.dtype} {raw.shape}")
    try:
        header = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise ScorerFormatError(f"{path}: header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ScorerFormatError(f"{path}: expected format {FORMAT_NAME!r}, got {got!r}")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ScorerFormatError(
            f"{path}: expected format_version 1..{FORMAT_VERSION}, got {version!r}"
        )
    return header, arrays


def _expect_array(arrays: dict, key: str, path: str, dtype: np.dtype, ndim: int) -> np.ndarray:
    if key not in arrays:
        raise ScorerFormatError(f"{path}: expected an array {key!r}, got entries {sorted(arrays)}")
    a = arrays[key]
    if a.dtype != dtype or a.ndim != ndim:
        raise ScorerFormatError(
            f"{path}: array {key!r}: expected {np.dtype(dtype)} with {ndim} dims, got {a.dtype} {a.shape}"
        )
    return a


# --------------------------------------------------------------------------- KNN


_EXACT_CHUNK = 1 << 22  # neighbour feature values gathered at a time for the exact L2 distances (16 MiB)


class KNNScorer:
    """Anomaly score = mean distance to the ``k`` nearest training features (exhaustive).

    Args:
        k: number of neighbours (the reference evaluates 1, 32, ..., 1024, 2048).  Must not
            exceed the number of training features; with the GPU backend at most
            :data:`GPU_MAX_K` (faiss-cpu has no such limit).
        metric: ``"cosine"`` (reference): distance ``1 - <x/|x|, y/|y|>`` in [0, 2], via
            ``IndexFlatIP`` on L2-normalised features (zero vectors are rejected);
            ``"l2"``: Euclidean distance (not squared), via ``IndexFlatL2`` on the rows minus
            the first training rows' mean, moved to the held rows' mean when added rows leave it
            off-centre (distances unchanged; faiss's float32 expansion then keeps the
            neighbours' order when the features share a large offset).
        batch_size: queries are searched ``batch_size`` rows at a time, so memory is
            ``O(batch_size * k)`` on top of the index; the ``M x N`` distance matrix is never
            formed (faiss itself works in blocks of queries x database rows).
        use_gpu: ``None`` = faiss GPU if available, else CPU.

    Multiplication count (testing phase, per query): ``N * d`` for the distances to the
    ``N`` training features, plus ``2 * d`` for normalising the query (cosine) or ``k * d``
    for the exact recomputation of the ``k`` neighbours' distances (L2: faiss's float32
    expansion cancels for near-duplicates).  BLAS internals (e.g. the squared norms faiss
    computes for the L2 expansion) are not counted.
    """

    _SCORER = "KNNScorer"
    _METRICS = ("cosine", "l2")

    def __init__(self, k: int = KNN_DEFAULT_K, metric: str = "cosine", batch_size: int = 1024, *, use_gpu: bool | None = None):
        self.k = _check_positive_int(k, "k")
        if metric not in self._METRICS:
            raise ConfigError(f"metric: expected one of {list(self._METRICS)}, got {metric!r}")
        self.metric = metric
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self._use_gpu = _resolve_use_gpu(use_gpu)
        if self._use_gpu and self.k > GPU_MAX_K:
            raise ConfigError(f"k: expected <= {GPU_MAX_K} with the faiss GPU backend, got {self.k}")
        self._index = None
        self._res = None
        self._dim: int | None = None
        # l2: the first training rows' mean, subtracted from every row and query before faiss sees
        # them.  Its float32 expansion |q|^2 + |x|^2 - 2<q, x> loses the neighbours' order when the
        # features share a large offset (1,000 standard deviations, d = 512: the wrong 1-NN for
        # every query); the distances themselves do not change with the shift.  It follows the held
        # rows when rows added later move their mean away from it (_recentre).
        self._shift: np.ndarray | None = None
        self._held_sum: np.ndarray | None = None  # l2: float64 sum of the held rows minus the shift
        self._held_sumsq = 0.0  # l2: float64 sum of their squared norms

    # -- properties
    @property
    def dim(self) -> int | None:
        """Feature dimension (``None`` before fitting)."""
        return self._dim

    @property
    def n_train(self) -> int:
        """Number of training features held."""
        return 0 if self._index is None else int(self._index.ntotal)

    @property
    def uses_gpu(self) -> bool:
        return self._use_gpu

    def __repr__(self) -> str:
        return (
            f"KNNScorer(k={self.k}, metric={self.metric!r}, batch_size={self.batch_size}, "
            f"n_train={self.n_train}, dim={self._dim}, gpu={self._use_gpu})"
        )

    # -- building
    def _prepare(self, x: np.ndarray, what: str) -> np.ndarray:
        return _l2_normalise(x, what) if self.metric == "cosine" else _minus_shift(x, self._shift)

    def _rows(self, x: Any, what: str, dim: int | None = None) -> np.ndarray:
        x = _as_features(x, what, dim)
        return x if self.metric == "cosine" else _check_l2_range(x, what)  # cosine: normalised in float64

    def fit(self, features: Any, video_ids: Any = None) -> "KNNScorer":
        """Use ``features`` ``(N, d)`` as the training set (replacing any previous one).

        ``video_ids`` is accepted for the shared interface and only length-checked: the
        KNN baseline does not use it.
        """
        x = self._rows(features, "features")
        _check_video_ids(video_ids, x.shape[0])
        if x.shape[0] < self.k:
            raise ConfigError(f"features: expected at least k={self.k} rows, got {x.shape[0]} (KNNScorer(k=...) sets "
                              f"k; the default {KNN_DEFAULT_K} is the reference's, for large training sets)")
        self._shift = None if self.metric == "cosine" else x.mean(axis=0, dtype=np.float64)
        self._index, self._res = _make_flat_index(x.shape[1], self.metric == "cosine", self._use_gpu)
        self._dim, self._held_sum, self._held_sumsq = x.shape[1], np.zeros(x.shape[1]), 0.0
        self._hold(self._prepare(x, "features"))
        return self

    def add(self, features: Any) -> "KNNScorer":
        """Append training features (``fit`` if nothing is held yet); returns self, as fit."""
        if self._index is None:
            return self.fit(features)
        x = self._rows(features, "features", self._dim)
        self._hold(self._prepare(x, "features"))
        return self

    def _hold(self, rows: np.ndarray) -> None:
        """Add rows as held (normalised; minus the shift for l2), then recentre if they moved the mean."""
        self._index.add(rows)
        if self.metric == "l2":
            self._add_sums(rows)
            self._recentre()

    def _add_sums(self, rows: np.ndarray) -> None:
        step = _shift_rows(self._dim)  # bounded float64 temporaries
        for s in range(0, rows.shape[0], step):
            chunk = rows[s : s + step].astype(np.float64)
            self._held_sum += chunk.sum(axis=0)
            self._held_sumsq += float(np.einsum("nd,nd->", chunk, chunk))

    def _recentre(self) -> None:
        """Move the shift to the held rows' mean once that cuts their mean squared norm, which
        faiss's float32 expansion loses the order in proportion to, by more than _RECENTRE_GAIN (rows
        added later from elsewhere, a format-1 file of unshifted rows).  Rows from the same
        distribution move the mean by far less, so a stream of adds does not rebuild the index.
        Rows held before a move are rounded twice: to about their own float32 resolution."""
        n = self.n_train
        mean = self._held_sum / n
        if float(mean @ mean) <= _RECENTRE_GAIN * self._held_sumsq / n:
            return
        new_shift = self._shift + mean
        index, res = _make_flat_index(self._dim, False, self._use_gpu)
        self._held_sum, self._held_sumsq = np.zeros(self._dim), 0.0
        rows = _shift_rows(self._dim)
        for s in range(0, n, rows):  # held + old shift - new shift, in float64, rounded once
            held = self._index.reconstruct_n(s, min(rows, n - s)).astype(np.float64) + self._shift
            moved = _minus_shift(held, new_shift)
            index.add(moved)
            self._add_sums(moved)
        self._index, self._res, self._shift = index, res, new_shift

    def _require_fitted(self) -> None:
        if self._index is None:
            raise NotFittedError("KNNScorer: expected a fitted scorer (call fit first), got an empty one")

    # -- scoring
    def score(self, queries: Any) -> np.ndarray:
        """Mean distance of every query row to its ``k`` nearest training features, float32 ``(M,)``."""
        self._require_fitted()
        q = self._rows(queries, "queries", self._dim)
        out = np.empty(q.shape[0], dtype=np.float32)
        for s in range(0, q.shape[0], self.batch_size):
            batch = self._prepare(q[s : s + self.batch_size], "queries")
            dist, idx = self._index.search(batch, self.k)
            if (idx < 0).any():  # pragma: no cover - cannot happen with k <= ntotal
                raise IndexStateError(f"faiss returned fewer than k={self.k} neighbours")
            if self.metric == "cosine":
                dist = 1.0 - dist.astype(np.float64)
            else:
                dist = self._exact_l2(batch, idx)
            out[s : s + batch.shape[0]] = dist.mean(axis=1)
        return out

    def _exact_l2(self, queries: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """||q - x|| in float64 for the neighbours faiss found.  Its float32 expansion
        |q|^2 + |x|^2 - 2<q, x> cancels for near-duplicates: a training row scored as a query got
        0.01-0.02 instead of 0 on ResNet features (typical 1-NN distance 0.7)."""
        out = np.empty(idx.shape, dtype=np.float64)
        d = queries.shape[1]
        cols = max(1, min(idx.shape[1], _EXACT_CHUNK // d))  # bounded gather, along k too
        rows = max(1, _EXACT_CHUNK // (cols * d))
        for r in range(0, idx.shape[0], rows):
            q = queries[r : r + rows, None, :]
            for c in range(0, idx.shape[1], cols):
                ids = idx[r : r + rows, c : c + cols]
                # the float32 difference is exact to its own rounding; the sum of squares in float64
                diff = self._index.reconstruct_batch(ids.ravel()).reshape(ids.shape + (d,)) - q
                out[r : r + rows, c : c + cols] = np.sqrt(np.einsum("qkd,qkd->qk", diff, diff, dtype=np.float64))
        return out

    @property
    def n_multiplications_per_query(self) -> int:
        self._require_fitted()
        per = self.n_train * self._dim
        return per + (2 * self._dim if self.metric == "cosine" else self.k * self._dim)

    def count_multiplications(self, n_queries: int) -> int:
        n = _check_positive_int(n_queries, "n_queries", minimum=0)
        return n * self.n_multiplications_per_query

    # -- persistence
    def _features(self) -> np.ndarray:
        return np.ascontiguousarray(self._index.reconstruct_n(0, self._index.ntotal), dtype=np.float32)

    def save(self, path: str | os.PathLike) -> None:
        """Write params + training features as held (normalised for cosine; minus ``shift``, the
        held rows' float64 mean as of fit or the last recentring, for l2) to ``path`` atomically."""
        self._require_fitted()
        params = {"k": self.k, "metric": self.metric, "batch_size": self.batch_size}
        arrays = {"header": _header_array(self._SCORER, params, dim=self._dim, n_train=self.n_train),
                  "features": self._features()}
        if self._shift is not None:
            arrays["shift"] = self._shift
        _atomic_savez(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, *, use_gpu: bool | None = None) -> "KNNScorer":
        header, arrays = _read_file(path)
        p = os.fspath(path)
        if header.get("scorer") != cls._SCORER:
            raise ScorerFormatError(f"{p}: expected a {cls._SCORER} file, got {header.get('scorer')!r}")
        feats = _expect_array(arrays, "features", p, np.dtype(np.float32), 2)
        params = header.get("params", {})
        try:
            obj = cls(k=params["k"], metric=params["metric"], batch_size=params["batch_size"], use_gpu=use_gpu)
        except (KeyError, TypeError, ConfigError) as exc:
            raise ScorerFormatError(f"{p}: bad params {params!r} ({exc})") from exc
        if feats.shape[0] < obj.k:  # fit() refuses it; a crafted file failed only at score()
            raise ScorerFormatError(f"{p}: k={obj.k} but only {feats.shape[0]} stored training features")
        if feats.shape != (header.get("n_train"), header.get("dim")):
            raise ScorerFormatError(
                f"{p}: expected features of shape ({header.get('n_train')}, {header.get('dim')}), got {feats.shape}"
            )
        try:  # values fit() never holds: NaN / Inf, beyond float32 squared distances, unnormalised cosine rows
            feats = _as_features(feats, f"{p}: features")
            if obj.metric == "l2":
                _check_l2_range(feats, f"{p}: features")
        except InvalidInputError as exc:
            raise ScorerFormatError(str(exc)) from exc
        if obj.metric == "cosine":
            norms = np.sqrt(np.einsum("nd,nd->n", feats, feats, dtype=np.float64))
            if np.abs(norms - 1.0).max() > 1e-3:
                raise ScorerFormatError(f"{p}: a cosine scorer stores unit rows, got norms from {norms.min():.3g} to "
                                        f"{norms.max():.3g}")
        if obj.metric == "l2":  # format 1 stored the rows themselves: no shift
            shift = np.zeros(feats.shape[1])
            if header["format_version"] >= 2:
                shift = _expect_array(arrays, "shift", p, np.dtype(np.float64), 1)
                if shift.shape != (feats.shape[1],) or not np.isfinite(shift).all():
                    finite = "" if np.isfinite(shift).all() else " with non-finite values"
                    raise ScorerFormatError(f"{p}: expected a finite shift of shape ({feats.shape[1]},), "
                                            f"got shape {shift.shape}{finite}")
            obj._shift = shift
        obj._index, obj._res = _make_flat_index(feats.shape[1], obj.metric == "cosine", obj._use_gpu)
        obj._dim, obj._held_sum, obj._held_sumsq = feats.shape[1], np.zeros(feats.shape[1]), 0.0
        obj._hold(feats)  # stored as held: normalised for cosine, minus the shift for l2
        return obj


# --------------------------------------------------------------------------- K-means


class KMeansScorer:
    """Anomaly score = Euclidean distance to the nearest of ``n_clusters`` K-means centres.

    Follows ``3-KMeans`` of the reference: clustering on the raw (not normalised) training
    features, score ``min_c |x - c|_2`` (not squared, not cosine).

    Training uses ``faiss.Kmeans`` (``niter=n_iter``, ``seed``, ``nredo=n_redo``), not the
    reference's ``sklearn.cluster.KMeans(init="k-means++", n_init=10, max_iter=300,
    tol=1e-4, random_state=2021)``: faiss initialises with random training points and runs
    exactly ``n_iter`` iterations (no tolerance stop), so centres differ from the
    reference's even on the same data.  faiss subsamples to ``max_points_per_centroid *
    n_clusters`` training points by default; here ``max_points_per_centroid=None`` (default)
    uses every point, like sklearn.

    Scoring: faiss ``IndexFlatL2`` finds the nearest centre, then the distance to that
    centre is recomputed exactly as ``sqrt(sum((x - c)**2))`` in float64 (avoids the
    cancellation of faiss's ``|x|^2 + |c|^2 - 2<x, c>`` expansion).

    ``add`` updates the centres incrementally (each new point is assigned to its nearest
    current centre, and every centre becomes the running mean of its points:
    ``c <- (n_c * c + sum(new)) / (n_c + m_c)``) without re-running K-means.

    Multiplication count (testing phase, per query): ``n_clusters * d`` for the distances to
    the centres plus ``d`` for the exact recomputation.
    """

    _SCORER = "KMeansScorer"

    def __init__(
        self,
        n_clusters: int = 32,
        n_iter: int = 300,
        seed: int = 0,
        *,
        n_redo: int = 1,
        max_points_per_centroid: int | None = None,
        batch_size: int = 4096,
        use_gpu: bool | None = None,
    ):
        self.n_clusters = _check_positive_int(n_clusters, "n_clusters", maximum=_INT32_MAX)
        self.n_iter = _check_positive_int(n_iter, "n_iter", maximum=_INT32_MAX)
        self.seed = _check_positive_int(seed, "seed", minimum=-_INT32_MAX - 1, maximum=_INT32_MAX)
        self.n_redo = _check_positive_int(n_redo, "n_redo", maximum=_INT32_MAX)
        self.max_points_per_centroid = (
            None if max_points_per_centroid is None
            else _check_positive_int(max_points_per_centroid, "max_points_per_centroid", maximum=_INT32_MAX)
        )
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self._use_gpu = _resolve_use_gpu(use_gpu)
        self._centroids: np.ndarray | None = None
        self._counts: np.ndarray | None = None
        self._index = None
        self._shift = None  # the centres' mean, subtracted before the faiss search (_set_centroids)
        self._res = None

    @property
    def dim(self) -> int | None:
        return None if self._centroids is None else int(self._centroids.shape[1])

    @property
    def centroids(self) -> np.ndarray:
        """Copy of the centres, float32 ``(n_clusters, d)``."""
        self._require_fitted()
        return self._centroids.copy()

    @property
    def counts(self) -> np.ndarray:
        """Number of training points assigned to each centre, int64 ``(n_clusters,)``."""
        self._require_fitted()
        return self._counts.copy()

    @property
    def n_train(self) -> int:
        return 0 if self._counts is None else int(self._counts.sum())

    @property
    def uses_gpu(self) -> bool:
        return self._use_gpu

    def __repr__(self) -> str:
        return (
            f"KMeansScorer(n_clusters={self.n_clusters}, n_iter={self.n_iter}, seed={self.seed}, "
            f"n_train={self.n_train}, dim={self.dim}, gpu={self._use_gpu})"
        )

    def _require_fitted(self) -> None:
        if self._centroids is None:
            raise NotFittedError("KMeansScorer: expected a fitted scorer (call fit first), got an empty one")

    def _set_centroids(self, centroids: np.ndarray, counts: np.ndarray) -> None:
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        # faiss searches centres and queries moved by the centres' mean: its float32 expansion
        # |q|^2 + |c|^2 - 2<q, c> cancels when the data sit far from the origin against their spread,
        # and picked another centre than the nearest (1 query in 6 at an offset of 100 std)
        self._shift = centroids.mean(axis=0, dtype=np.float64)
        index, res = _make_flat_index(centroids.shape[1], False, self._use_gpu)
        index.add(_minus_shift(centroids, self._shift))
        self._centroids, self._counts, self._index, self._res = centroids, counts.astype(np.int64), index, res

    def _nearest(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index of nearest centre, exact Euclidean distance in float64), batched."""
        idx = np.empty(x.shape[0], dtype=np.int64)
        dist = np.empty(x.shape[0], dtype=np.float64)
        for s in range(0, x.shape[0], self.batch_size):
            batch = x[s : s + self.batch_size]
            _, nn = self._index.search(_minus_shift(batch, self._shift), 1)
            nn = nn[:, 0]
            diff = batch.astype(np.float64) - self._centroids[nn].astype(np.float64)
            idx[s : s + batch.shape[0]] = nn
            dist[s : s + batch.shape[0]] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        return idx, dist

    def fit(self, features: Any, video_ids: Any = None) -> "KMeansScorer":
        """Cluster ``features`` ``(N, d)`` (``N >= n_clusters``); ``video_ids`` is only length-checked."""
        x = _check_l2_range(_as_features(features, "features"), "features")
        _check_video_ids(video_ids, x.shape[0])
        n, d = x.shape
        if n < self.n_clusters:
            raise ConfigError(f"features: expected at least n_clusters={self.n_clusters} rows, got {n}")
        mppc = self.max_points_per_centroid
        if mppc is None:
            mppc = max(256, -(-n // self.n_clusters))  # ceil: never subsample
        km = faiss.Kmeans(
            d,
            self.n_clusters,
            niter=self.n_iter,
            seed=self.seed,
            nredo=self.n_redo,
            max_points_per_centroid=mppc,
            min_points_per_centroid=1,  # only silences faiss's "too few points" warning
            verbose=False,
            gpu=self._use_gpu,
        )
        km.train(x)
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32).reshape(self.n_clusters, d)
        self._set_centroids(centroids, np.zeros(self.n_clusters, dtype=np.int64))
        assign, _ = self._nearest(x)
        self._counts = np.bincount(assign, minlength=self.n_clusters).astype(np.int64)
        return self

    def add(self, features: Any) -> "KMeansScorer":
        """Incremental update of the centres with more training points (``fit`` if empty); returns self."""
        if self._centroids is None:
            return self.fit(features)
        x = _check_l2_range(_as_features(features, "features", self.dim), "features")
        assign, _ = self._nearest(x)
        m = np.bincount(assign, minlength=self.n_clusters).astype(np.int64)
        sums = np.zeros(self._centroids.shape, dtype=np.float64)
        np.add.at(sums, assign, x.astype(np.float64))
        total = self._counts + m
        upd = m > 0
        new = self._centroids.astype(np.float64)
        new[upd] = (self._counts[upd, None] * new[upd] + sums[upd]) / total[upd, None]
        self._set_centroids(new, total)
        return self

    def score(self, queries: Any) -> np.ndarray:
        """Euclidean distance of every query row to its nearest centre, float32 ``(M,)``."""
        self._require_fitted()
        q = _check_l2_range(_as_features(queries, "queries", self.dim), "queries")
        _, dist = self._nearest(q)
        return dist.astype(np.float32)

    def assign(self, queries: Any) -> np.ndarray:
        """Index of the nearest centre of every query row, int64 ``(M,)``."""
        self._require_fitted()
        idx, _ = self._nearest(_check_l2_range(_as_features(queries, "queries", self.dim), "queries"))
        return idx

    @property
    def n_multiplications_per_query(self) -> int:
        self._require_fitted()
        return self.n_clusters * self.dim + self.dim

    def count_multiplications(self, n_queries: int) -> int:
        n = _check_positive_int(n_queries, "n_queries", minimum=0)
        return n * self.n_multiplications_per_query

    def save(self, path: str | os.PathLike) -> None:
        """Write params, centres and per-centre counts to ``path`` atomically."""
        self._require_fitted()
        params = {
            "n_clusters": self.n_clusters,
            "n_iter": self.n_iter,
            "seed": self.seed,
            "n_redo": self.n_redo,
            "max_points_per_centroid": self.max_points_per_centroid,
            "batch_size": self.batch_size,
        }
        _atomic_savez(
            path,
            {"header": _header_array(self._SCORER, params, dim=self.dim),
             "centroids": self._centroids, "counts": self._counts},
        )

    @classmethod
    def load(cls, path: str | os.PathLike, *, use_gpu: bool | None = None) -> "KMeansScorer":
        header, arrays = _read_file(path)
        p = os.fspath(path)
        if header.get("scorer") != cls._SCORER:
            raise ScorerFormatError(f"{p}: expected a {cls._SCORER} file, got {header.get('scorer')!r}")
        params = header.get("params", {})
        try:
            obj = cls(
                n_clusters=params["n_clusters"], n_iter=params["n_iter"], seed=params["seed"],
                n_redo=params["n_redo"], max_points_per_centroid=params["max_points_per_centroid"],
                batch_size=params["batch_size"], use_gpu=use_gpu,
            )
        except (KeyError, TypeError, ConfigError) as exc:
            raise ScorerFormatError(f"{p}: bad params {params!r} ({exc})") from exc
        cents = _expect_array(arrays, "centroids", p, np.dtype(np.float32), 2)
        counts = _expect_array(arrays, "counts", p, np.dtype(np.int64), 1)
        if cents.shape != (obj.n_clusters, header.get("dim")) or counts.shape != (obj.n_clusters,):
            raise ScorerFormatError(
                f"{p}: expected centroids ({obj.n_clusters}, {header.get('dim')}) and counts ({obj.n_clusters},), "
                f"got {cents.shape} and {counts.shape}"
            )
        if (counts < 0).any():
            raise ScorerFormatError(f"{p}: expected non-negative counts")
        try:  # NaN / Inf or centres beyond float32 squared distances: fit() never makes them
            cents = _check_l2_range(_as_features(cents, f"{p}: centroids"), f"{p}: centroids")
        except InvalidInputError as exc:
            raise ScorerFormatError(str(exc)) from exc
        obj._set_centroids(cents, counts)
        return obj


_SCORERS = {KNNScorer._SCORER: KNNScorer, KMeansScorer._SCORER: KMeansScorer}


def load_scorer(path: str | os.PathLike, *, use_gpu: bool | None = None) -> KNNScorer | KMeansScorer:
    """Load a file written by :meth:`KNNScorer.save` or :meth:`KMeansScorer.save`."""
    header, _ = _read_file(path)
    cls = _SCORERS.get(header.get("scorer"))
    if cls is None:
        raise ScorerFormatError(
            f"{os.fspath(path)}: expected scorer one of {sorted(_SCORERS)}, got {header.get('scorer')!r}"
        )
    return cls.load(path, use_gpu=use_gpu)
