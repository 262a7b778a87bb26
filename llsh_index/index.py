"""LearnableLSHIndex: the paper's LSH / LLSH / light-LLSH as a reusable index.

    index = LearnableLSHIndex(n_tables=8, n_bits=32)
    index.fit(train_features, video_ids=train_video_ids)   # MoCo training (skip it for plain LSH)
    index.add(train_features)                               # hash + build the sorted tables
    scores = index.score(test_features)                     # (M,) anomaly scores, higher = more anomalous

Scoring modes (per table j, q = the query's real-valued code, B = its bucket in table j):
    "mean"     LLSH: mean over c in B of ||q - c||   (the paper; needs the stored codes)
    "light"    light-LLSH: ||q - mean(B)||
    "squared"  exact mean over c in B of ||q - c||^2, from per-bucket sums in O(r)
The anomaly score is the minimum over tables; a query whose key is absent from table j gets
`miss_value` there.  The default miss value is sqrt(n_bits) (n_bits for "squared"): no
distance between two codes in [0, 1]^r can reach it, so a query that misses every table ranks
above any query that hits one, without the 1e10 of the authors' code wrecking min-max
normalisation.  Pass miss_value=1e10 to reproduce the reference exactly.

score(queries, n_probes=P) (an extension; P = 1 is the paper) also probes, per table, the buckets
of the query's key with one or two of its least confident bits flipped, and keeps the smallest
distance over the buckets that exist (llsh_index.probing).  miss_probes=P (an extension; 0 is the
paper) probes so only for the queries that miss every table.  reduce="mean" (an extension; "min"
is the paper) averages the distances of the tables that hit instead of taking their minimum.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import sys
import threading
import warnings
from collections.abc import Iterable, Mapping
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import _engine, probing
from ._validation import as_real, check_bool, check_features, check_int_range, check_seed, check_video_ids, SEED_MAX
from .encoder import MIN_GEMM_ROWS, HashEncoder, float32_rows, pad_to_gemm_rows
from .errors import ConfigError, CudaUnavailableError, DeviceMismatchError, IndexFormatError, IndexStateError, \
    InvalidDTypeError, InvalidInputError, NotFittedError, UndertrainedWarning
from .io import read_container, write_container
from .training import FALLBACK_DEFAULTS, LR_SCHEDULES, PAPER_DEFAULTS, TrainingConfig, TrainingLog, barely_trains, \
    train_moco

_FILE_KIND = "LearnableLSHIndex"
MIN_TEMPERATURE = 1e-3  # fit(temperature=...): MoCo's are 0.05-1; far smaller ones only saturate the codes
_CHUNK_BYTES = 64 << 20  # working set of one hashed chunk: bounds the memory of add() and score()
_MAX_TABLES = 1 << 16



def _stderr_is_terminal() -> bool:
    """Whether progress bars would reach a person: False for a log file, a pipe, or no stderr at all
    (pythonw, daemons: sys.stderr None, or closed)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _training_config_from(saved, path) -> Optional[TrainingConfig]:
    """The TrainingConfig a file stores, or None with a warning when it does not read as one (a
    file from another version, an edited one): it is a record of the settings, the index loads
    without it."""
    fields = {f.name: f for f in dataclasses.fields(TrainingConfig)}
    default = TrainingConfig()
    problem = None
    if not isinstance(saved, dict):
        problem = f"expected a mapping, got {type(saved).__name__}"
    else:
        unknown = sorted(set(saved) - set(fields))
        if unknown:
            problem = f"unknown settings {unknown}"
        for name, value in saved.items():
            if problem is not None:
                break
            want = type(getattr(default, name))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                saved = dict(saved, **{name: float(value)})
            elif not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
                problem = f"setting {name!r} expected {want.__name__}, got {value!r}"
    if problem is not None:
        warnings.warn(f"{path}: the saved training settings do not read as this version's ({problem}); "
                      "training_config_ is None, the index itself loads", UserWarning, stacklevel=3)
        return None
    return TrainingConfig(**saved)


class LearnableLSHIndex:
    """Learnable LSH index over (N, dim) features; see the module docstring.

    Parameters
    ----------
    dim : feature dimension; inferred from the first fit()/add() when None.
    n_tables : b, the number of hash tables (paper: 8).
    n_bits : r, bits per key, 1..64 (paper: 32).
    mode : default scoring mode, "mean" (LLSH), "light" (light-LLSH) or "squared".
    miss_value : score of a table where the query's bucket is missing (default above); >= 0.  A
        value below sqrt(n_bits) lets a query that misses a table score below some hits.
    code_dtype : "float32" or "float16" storage of the per-item codes.
    store_codes : keep per-item codes (needed by "mean"); False keeps only per-bucket statistics,
        which is all "light" and "squared" need (light-LLSH's memory and disk footprint).
    seed : seeds the Xavier init and the training sampler; 0..2**32 - 1 (torch keeps 32 bits of a seed,
        so a wider one would repeat a smaller one's layers).
    batch_size : rows hashed per chunk in add()/score(); default from a 64 MiB working-set budget.
    n_threads : native threads (0 = the CPUs this process may run on).
    device : "cpu" or "cuda[:N]".

    feature_space_ (attribute, saved with the index): the feature space of the features the layers
    were fitted / the items built on, as llsh_index.video.feature_space gives it from a feature
    file's meta (extractor name, version and settings, T, s, clamp...); `llsh-index fit` / `build`
    set it and `score` / `info` / `stream` check new features against it.  None (no check) for an
    index made from arrays, or saved before it was recorded.
    """

    def __init__(self, dim: Optional[int] = None, n_tables: int = 8, n_bits: int = 32, *, mode: str = "mean",
                 miss_value: Optional[float] = None, code_dtype: str = "float32", store_codes: bool = True,
                 seed: int = 0, batch_size: Optional[int] = None, n_threads: int = 0, device: str = "cpu"):
        self.n_tables = check_int_range(n_tables, "n_tables", 1, _MAX_TABLES)
        self.n_bits = check_int_range(n_bits, "n_bits", 1, 64)
        # LayerNorm of a single feature is 0 whatever it is: every code 0.5, every score equal
        self.dim = None if dim is None else check_int_range(dim, "dim", 2)
        check_mode(mode)
        store_codes = check_bool(store_codes, "store_codes")
        if mode == "mean" and not store_codes:
            raise ConfigError("mode: 'mean' needs store_codes=True; use 'light' or 'squared' for a "
                              "statistics-only index")
        if code_dtype not in ("float32", "float16"):
            raise ConfigError(f"code_dtype: expected 'float32' or 'float16', got {code_dtype!r}")
        self.mode = mode
        self.miss_value = _check_miss_value(miss_value)
        self.code_dtype = code_dtype
        self.store_codes = bool(store_codes)
        self.seed = check_seed(seed)
        self.batch_size = None if batch_size is None else check_int_range(batch_size, "batch_size", 1)
        self.n_threads = check_int_range(n_threads, "n_threads", 0, 2 ** 16)
        self.device = _normalise_device(device)
        _require_cuda(self.device, f"device={self.device!r}")
        self.encoder: Optional[HashEncoder] = None
        self.training_log_: Optional[TrainingLog] = None
        self.training_config_: Optional[TrainingConfig] = None  # the last fit()'s settings, defaults resolved
        # the feature space of the features it was fitted / built on (llsh_index.video.feature_space of their
        # feature file's meta: extractor, T, s...), which `llsh-index fit / build` record; None from arrays
        self.feature_space_: Optional[dict] = None
        self.last_n_compared: Optional[int] = None
        self._tables: Optional[Dict] = None
        self._write_lock = threading.Lock()
        self._layers_lock = threading.Lock()  # the first call's lazy layers (_features), taken inside _write_lock
        if self.dim is not None:
            self._make_encoder(self.dim)

    # ------------------------------------------------------------------ state
    def __getstate__(self):
        # in-memory pickling (multiprocessing, joblib, Ray); files use save(), which never pickles
        state = self.__dict__.copy()
        del state["_write_lock"], state["_layers_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._write_lock, self._layers_lock = threading.Lock(), threading.Lock()

    @property
    def ntotal(self) -> int:
        """Number of items added."""
        t = self._tables
        return 0 if t is None else int(t["n_items"])

    @property
    def is_trained(self) -> bool:
        return self.training_log_ is not None

    def default_miss_value(self, mode: Optional[str] = None) -> float:
        return self._largest_distance(mode) if self.miss_value is None else self.miss_value

    def misses_score_above_hits(self, mode: Optional[str] = None) -> bool:
        """Whether a score at the miss value can only come from a query that missed every table: true for
        the default miss value (sqrt(n_bits), n_bits for "squared": no distance reaches it) and above; a
        smaller miss_value (allowed, to rank misses among hits) is also the score of far hits."""
        return self.miss_value is None or self.miss_value >= self._largest_distance(mode)

    def _largest_distance(self, mode: Optional[str] = None) -> float:
        """A bound no distance between codes in (0, 1)^r reaches: the default miss value."""
        mode = self.mode if mode is None else mode
        return float(self.n_bits) if mode == "squared" else math.sqrt(self.n_bits)

    def _make_encoder(self, dim: int) -> None:
        try:
            encoder = HashEncoder(dim, self.n_tables, self.n_bits, seed=self.seed).to(self.device)
        except RuntimeError as exc:  # torch's allocator: the layers are b*r x dim float32
            gib = self.n_tables * self.n_bits * dim * 4 / 2 ** 30
            raise ConfigError(f"hash layers of {self.n_tables * self.n_bits} x {dim} float32 ({gib:.3g} GiB) "
                              f"cannot be allocated: {exc}") from exc
        self.dim = dim
        self.encoder = encoder
        self.encoder.eval()

    def _features(self, x, name: str) -> torch.Tensor:
        t = check_features(x, name, self.dim, self.device)
        if self.encoder is None:
            if t.shape[1] < 2:
                raise InvalidInputError(f"{name}: expected at least 2 features per row (LayerNorm of one feature "
                                        f"is 0 whatever it is), got {t.shape[1]}")
            with self._layers_lock:  # two first calls at once: one sets the dimension, the other is checked
                if self.encoder is None:
                    self._make_encoder(int(t.shape[1]))
                elif t.shape[1] != self.dim:
                    raise InvalidInputError(f"{name}: expected dimension {self.dim}, got shape {tuple(t.shape)}")
        return t

    @contextlib.contextmanager
    def _first_layers_undone_on_error(self):
        """Around add() / fit() (under _write_lock): if the call fails on an index whose layers it
        created (no dim given, nothing added or trained yet), they go again, so a failed first call
        leaves the dimension open as it found it."""
        fresh = self.encoder is None
        try:
            yield
        except BaseException:
            if fresh and self._tables is None and self.training_log_ is None:
                with self._layers_lock:
                    self.encoder, self.dim = None, None
            raise

    def _chunk_rows(self, t: Optional[torch.Tensor] = None, probes: int = 1) -> int:
        if self.batch_size is not None:
            return self.batch_size
        # a row's working set: the GEMM output, the keys and the lookup's scratch, ~4*b*r + 64*b
        # bytes; the float32 copy of an input that needs converting, 4*d more; with P > 1 probes,
        # the (rows, b, P) int64 probe masks, 8*b*P more.  Few large GEMM calls run well below the
        # cost of many small ones on the CPU (25-40% less time hashing 200,000 rows in 5 chunks than
        # in 28, benchmarks/RESULTS.md); the rows' results do not change.
        per_row = 4 * self.n_tables * self.n_bits + 64 * self.n_tables
        if not (t is not None and t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()):
            per_row += 4 * max(1, self.dim or 1)
        if probes > 1:
            per_row += 8 * self.n_tables * probes
        return max(256, _CHUNK_BYTES // per_row)

    def reset(self) -> None:
        """Drops every added item; the hash layers stay."""
        with self._write_lock:
            self._tables = None

    # ------------------------------------------------------------------ hashing
    @torch.no_grad()
    def _encode_chunk(self, x: torch.Tensor, name: str, row0: int, stage=None, buf=None, encoder=None):
        """One chunk -> (codes (n, b, r) float32, keys (n, b) uint64), numpy on the CPU.

        stage (CPU): (keys (b, n_total) uint64, codes (b, n_total, r) float32, row) staging arrays
        of add(); the chunk's keys and codes are also written there at `row`, table-major, by the
        native epilogue.  Returns whether it did (it does not for padded chunks).
        buf (CPU): a float32 tensor of at least (rows, b*r) that receives the GEMM output and so the
        returned codes (see _chunk_buffer): valid until the next call with the same buffer.
        encoder: the layers (default self.encoder); the read paths without tables pass the one they
        checked, since a failing first add()/fit() may drop self.encoder meanwhile.
        """
        encoder = self.encoder if encoder is None else encoder
        source, x = x, float32_rows(x).contiguous()
        n = x.shape[0]
        if n < MIN_GEMM_ROWS:
            # BLAS takes another kernel (gemv) for a handful of rows, whose rounding differs; padding
            # keeps every row's code bit-identical however the data is batched
            x = pad_to_gemm_rows(x)
            stage = None
        if not _engine.on_device(x):
            # one native epilogue: fold, sigmoid, keys and the NaN check (a NaN/Inf anywhere in a row
            # reaches its logits) in a single pass over the GEMM output
            table_keys, table_codes, stage_row = stage if stage is not None else (None, None, 0)
            codes, keys, bad = encoder.hash_codes_cpu(x, self.n_threads, table_codes, table_keys, stage_row, out=buf)
            if 0 <= bad < n:
                raise _bad_row_error(name, x[bad], row0 + bad, source[bad])
            if stage is not None:
                return None
            return codes[:n], keys[:n]
        if stage is not None:
            raise ValueError("_encode_chunk: stage is for the CPU engine")
        logits = encoder.hash_logits(x)[:n].contiguous()
        bad = torch.isnan(logits).flatten(1).any(dim=1)  # a NaN/Inf anywhere in a row reaches its logits
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            raise _bad_row_error(name, x[i], row0 + i, source[i])
        return _engine.sigmoid_binarize(logits)

    def _chunk_buffer(self, t: torch.Tensor, probes: int = 1):
        """One GEMM output buffer reused by every CPU chunk of `t` (None on a GPU): a fresh
        (chunk, b*r) array per chunk would be mapped and first-touched again each time (0.07-0.1 s
        of add() at N = 200,000 on the benchmark VM, 3-5% of its GEMM)."""
        if _engine.on_device(t):
            return None
        rows = max(MIN_GEMM_ROWS, min(self._chunk_rows(t, probes), int(t.shape[0])))
        return torch.empty((rows, self.n_tables * self.n_bits), dtype=torch.float32)

    def _chunks(self, t: torch.Tensor, probes: int = 1):
        step = self._chunk_rows(t, probes)
        for i in range(0, t.shape[0], step):
            yield i, t[i:i + step]

    def _layers_and_features(self, features, caller: str, what: str):
        """(layers, checked features) for the read paths that need no tables (encode, hash_keys,
        hash_queries): the layers come from dim=, fit() or add(), never from a read, and are taken
        once, so a failing first add()/fit() that drops them meanwhile cannot leave a read half done."""
        encoder = self.encoder
        if encoder is None:
            raise NotFittedError(f"{caller}: the index has no hash layers yet (give dim=, or call fit() or add())")
        return encoder, check_features(features, what, encoder.dim, self.device)

    def _encode_all(self, features, caller: str, what: str = "features"):
        encoder, t = self._layers_and_features(features, caller, what)
        parts = [self._encode_chunk(c, what, i, encoder=encoder) for i, c in self._chunks(t)]
        cat = torch.cat if _engine.on_device(t) else np.concatenate
        return cat([p[0] for p in parts]), cat([p[1] for p in parts])

    def encode(self, features) -> np.ndarray:
        """Real-valued codes (M, n_tables, n_bits): sigmoid outputs of the hash layers."""
        return self._encode_all(features, "encode")[0]

    def hash_keys(self, features) -> np.ndarray:
        """Packed keys (M, n_tables) uint64: bit i of table j's key is code[:, j, i] >= 0.5."""
        return self._encode_all(features, "hash_keys")[1]

    # ------------------------------------------------------------------ training
    def fit(self, features, video_ids=None, *, iterations: Optional[int] = None, epochs: int = 1,
            batch_size: Optional[int] = None, lr: Optional[float] = None, sgd_momentum: float = 0.9,
            weight_decay: float = 1e-4, temperature: Optional[float] = None, queue_size: Optional[int] = None,
            momentum: Optional[float] = None, max_offset: int = 150, n_neighbors: Optional[int] = None,
            progress: Optional[bool] = None, seed: Optional[int] = None, lr_schedule: str = "constant",
            warmup_steps: int = 0, grad_clip: float = 0.0, project_mean: Optional[bool] = None,
            project_pcs: Optional[int] = None, centre_layers: bool = False) -> "LearnableLSHIndex":
        """Trains the hash layers with MoCo (see llsh_index.training).

        features: (N, dim), grouped by video and in time order within each video.
        video_ids: one label per row; the positive of a snippet is a snippet of the same video
            within +-max_offset rows.  Without video_ids (static data) the positive is one of the
            n_neighbors nearest rows in cosine similarity of the normalised features, and the
            layers first lose their components along the project_pcs main directions of the
            training rows' variation (see project_pcs).
        One epoch is n_videos * iterations pairs (rows * iterations without video_ids).

        Defaults: a setting left at None takes the paper's value when video_ids are given
        (training.PAPER_DEFAULTS: iterations 60, batch_size 256, lr 1e-3, temperature 0.2,
        queue_size 8192, momentum 0.999, project_mean False, project_pcs 0) and the static-data
        fallback's without them (training.FALLBACK_DEFAULTS: iterations 3, batch_size 32,
        lr 1e-2, temperature 0.5, queue_size 64, momentum 0.99, n_neighbors 5, project_mean True,
        project_pcs 30); a value passed explicitly is always used as given.
        Bounds: temperature >= MIN_TEMPERATURE (1e-3: smaller ones saturate every code within a step),
        lr and weight_decay within float32's range, counts below 2**62.
        Opt-in with video_ids: lr_schedule "cosine" / "linear" decays the lr to 0 over all steps
        after warmup_steps of linear warm-up (llsh_index.training.lr_at); grad_clip > 0 clips the
        gradient norm; project_mean drops the gradient along the mean direction of the
        layer-normalised training rows, which dominates the gradient when the features share a
        large common component (benchmarks/RESULTS.md; the layers keep their initial component
        there, up to weight decay's shrinking of lr * weight_decay per step); project_pcs = k > 0 removes the top-k
        principal directions of the layer-normalised training rows (at most N - 1 and (dim - 1) // 2 of
        them; training_log_.projected_pcs says how many) from the
        layers before training and from every gradient, so the codes ignore the main modes of the
        normal data's variation (an anomaly then shows in the directions the normal data keeps
        small; on ADBench's MVTec-AD embeddings this is where the gain over LSH comes from).
        centre_layers (ours, off by default): the layers also lose the mean direction of the
        layer-normalised rows (outside the projected PCs), and the gradient stays off it, so each
        hyperplane passes through the data's mean and every bit splits the normal data; with
        project_pcs it keeps the buckets small (benchmarks/RESULTS.md, Table 2 with fewer bits).
        A second fit() (or one after reset()) continues from the current layers with new pairs and a
        new initial queue drawn from the same seed (the key encoder restarts as a copy of the layers
        and SGD's momentum from zero: not bit for bit one longer fit); training_log_ then covers
        every call.  For a fresh start, make a new index with the same seed.
        """
        # the write lock: add() or another fit() waits, so tables are never hashed with half-trained
        # layers and two trainings never interleave their steps
        with self._write_lock, self._first_layers_undone_on_error():
            if self._tables is not None:
                raise IndexStateError(f"fit: the index already holds {self.ntotal} items hashed with the current "
                                      "layers; call reset() first (it keeps the layers: fit() then trains them "
                                      "further), then fit() and add() again")
            t = self._features(features, "features")
            vid = None if video_ids is None else check_video_ids(video_ids, t.shape[0])
            given = dict(iterations=iterations, batch_size=batch_size, lr=lr, temperature=temperature,
                         queue_size=queue_size, momentum=momentum, n_neighbors=n_neighbors, project_mean=project_mean,
                         project_pcs=project_pcs)
            defaults = PAPER_DEFAULTS if vid is not None else FALLBACK_DEFAULTS
            chosen = {k: defaults[k] if v is None else v for k, v in given.items()}
            iterations, batch_size, lr, temperature = (chosen[k] for k in ("iterations", "batch_size", "lr", "temperature"))
            queue_size, momentum, n_neighbors = (chosen[k] for k in ("queue_size", "momentum", "n_neighbors"))
            project_mean, project_pcs = chosen["project_mean"], chosen["project_pcs"]
            big = 2 ** 62  # counts beyond int64's reach overflowed numpy / torch with their own errors
            cfg = TrainingConfig(
                iterations=check_int_range(iterations, "iterations", 1, big),
                epochs=check_int_range(epochs, "epochs", 1, big),
                batch_size=check_int_range(batch_size, "batch_size", 1, big), lr=as_real(lr, "lr"), sgd_momentum=as_real(sgd_momentum, "sgd_momentum"),
                weight_decay=as_real(weight_decay, "weight_decay"), temperature=as_real(temperature, "temperature"),
                queue_size=check_int_range(queue_size, "queue_size", 1, big), momentum=as_real(momentum, "momentum"),
                max_offset=check_int_range(max_offset, "max_offset", 0, big),
                n_neighbors=check_int_range(n_neighbors, "n_neighbors", 1, big),
                seed=self.seed if seed is None else check_seed(seed),
                # None (a bar on a terminal only) is recorded as False: a saved file must not depend on
                # where stderr went; train_moco gets the bar decided below
                progress=False if progress is None else check_bool(progress, "progress", allow_01=True),
                lr_schedule=lr_schedule,
                warmup_steps=check_int_range(warmup_steps, "warmup_steps", 0, big), grad_clip=as_real(grad_clip, "grad_clip"),
                project_mean=check_bool(project_mean, "project_mean"),
                project_pcs=check_int_range(project_pcs, "project_pcs", 0, big),
                centre_layers=check_bool(centre_layers, "centre_layers"))
            if cfg.lr_schedule not in LR_SCHEDULES:
                raise ConfigError(f"lr_schedule: expected one of {', '.join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
            f32 = float(np.finfo(np.float32).max)  # torch's SGD takes lr and weight decay as float32
            checks = [("momentum", cfg.momentum, 0.0 <= cfg.momentum <= 1.0, "0..1"),
                      # below ~1e-3 the logits / tau saturate every code within a step (weights 1e4-1e23)
                      ("temperature", cfg.temperature, cfg.temperature >= MIN_TEMPERATURE, f">= {MIN_TEMPERATURE:g}"),
                      ("lr", cfg.lr, 0 < cfg.lr <= f32, "> 0 within float32's range"),
                      ("weight_decay", cfg.weight_decay, 0 <= cfg.weight_decay <= f32, ">= 0 within float32's range"),
                      ("sgd_momentum", cfg.sgd_momentum, 0.0 <= cfg.sgd_momentum < 1.0, "0 <= x < 1"),
                      ("grad_clip", cfg.grad_clip, cfg.grad_clip >= 0, ">= 0 (0: no clipping)")]
            for name, value, ok, want in checks:
                if not (math.isfinite(value) and ok):
                    raise ConfigError(f"{name}: expected a finite number {want}, got {value}")
            if vid is not None:
                counts = np.bincount(vid)
                if counts.min() < 2:
                    short = int(np.argmin(counts))
                    raise InvalidInputError(f"video_ids: every training video needs at least 2 snippets to draw a "
                                            f"positive, got a video with {counts.min()} (video #{short} in order of "
                                            f"appearance)")
            elif t.shape[0] < 2:
                raise InvalidInputError(f"features: training needs at least 2 rows, got {t.shape[0]}")
            # training reads random rows: one float32 copy on the index's device
            feats = float32_rows(t)
            for r0 in range(0, feats.shape[0], 1 << 16):  # rows whose float32 LayerNorm is NaN: NaN layers
                with torch.no_grad():
                    ok = torch.isfinite(F.layer_norm(feats[r0:r0 + (1 << 16)], feats.shape[1:])).all(dim=1)
                if not bool(ok.all()):
                    i = r0 + int(torch.nonzero(~ok)[0, 0])
                    raise _bad_row_error("features", feats[i], i, t[i])
            before = self.encoder.weight.detach().clone()
            old = self.training_log_
            try:
                shown = cfg if progress is not None else dataclasses.replace(cfg, progress=_stderr_is_terminal())
                log = train_moco(self.encoder, feats, vid, shown, stream=0 if old is None else max(old.steps, 1))
            except BaseException:  # an allocation refused, an interrupt: the layers as they were (not half-projected)
                with torch.no_grad():
                    self.encoder.weight.copy_(before)
                raise
            if not _usable_layers(self.encoder.weight):  # diverged: keep the layers it started from
                with torch.no_grad():
                    self.encoder.weight.copy_(before)
                step = next((i for i, v in enumerate(log.losses) if not math.isfinite(v)), None)
                raise ConfigError(f"fit: training diverged (the hash layers became NaN/Inf or too large for float32 "
                                  f"logits"
                                  f"{'' if step is None else f'; loss not finite from logged step {step}'}); lower lr "
                                  f"(got {cfg.lr:g}) or weight_decay (got {cfg.weight_decay:g}), or raise the "
                                  f"temperature (got {cfg.temperature:g}); the layers are left as they were before fit()")
            if barely_trains(log.steps, cfg.lr, log.projected_pcs, cfg.centre_layers, continued=old is not None):
                warnings.warn(UndertrainedWarning(
                    f"fit: {log.steps} SGD step{'' if log.steps == 1 else 's'} at lr {cfg.lr:g} barely move the hash layers from plain LSH "
                    f"({len(np.unique(vid)) if vid is not None else t.shape[0]} "
                    f"{'videos' if vid is not None else 'rows'}, iterations {cfg.iterations}, batch_size "
                    f"{cfg.batch_size}); for a few short videos (such as Ped2) use llsh_index.training.DEMO_TRAINING's "
                    f"settings, or raise iterations / epochs"), stacklevel=2)
            self.training_config_ = cfg  # the settings used, defaults resolved
            if old is not None:  # a further fit() continues from the trained layers: the log covers both
                log = TrainingLog(losses=old.losses + log.losses, lrs=old.lrs + log.lrs, steps=old.steps + log.steps,
                                  positives=log.positives, projected_pcs=log.projected_pcs)
            self.training_log_ = log
            return self

    # ------------------------------------------------------------------ indexing
    @torch.no_grad()
    def add(self, features, progress: bool = False, *, _first_row: int = 0) -> "LearnableLSHIndex":
        """Hashes `features` in bounded chunks and merges them into the sorted tables.

        Repeated add() calls give exactly the tables of one add() of all the data: rows are
        ordered by (key, item id) whatever the batching (statistics-only indexes: the bucket sums
        up to float64 summation order).  (_first_row: where these rows start in a
        caller's larger array, for the row numbers of errors; ShardedIndex.add.)
        """
        # the write lock: another add() or fit() waits; the input is checked (and on a first call the
        # layers made) under it too, so a failed first call can undo its layers before anyone uses them
        with self._write_lock, self._first_layers_undone_on_error():
            return self._add_locked(features, progress, _first_row)

    def _add_locked(self, features, progress: bool, _first_row: int) -> "LearnableLSHIndex":
        from tqdm.auto import tqdm

        t = self._features(features, "features")
        n, b, r = int(t.shape[0]), self.n_tables, self.n_bits
        on_gpu = _engine.on_device(t)
        store = torch.float16 if self.code_dtype == "float16" else torch.float32
        old = self._tables
        n_old = 0 if old is None else int(old["n_items"])
        if on_gpu:
            keys = torch.empty((b, n), dtype=torch.uint64, device=t.device)
            codes = torch.empty((b, n, r), dtype=store, device=t.device)
        else:
            keys = np.empty((b, n), dtype=np.uint64)
            codes = np.empty((b, n, r), dtype=np.float16 if self.code_dtype == "float16" else np.float32)
        bar = tqdm(total=n, desc="LLSH indexing", unit="row", disable=not progress, leave=False)
        # float32 on the CPU: the epilogue writes the staging arrays itself (no transposing copy)
        stage_direct = not on_gpu and codes.dtype == np.float32
        buf = self._chunk_buffer(t)  # each chunk's codes are staged before the next overwrites them
        for i, chunk in self._chunks(t):
            out = self._encode_chunk(chunk, "features", _first_row + i,
                                     stage=(keys, codes, i) if stage_direct else None, buf=buf)
            if out is not None:
                c, k = out
                rows = slice(i, i + c.shape[0])
                keys[:, rows] = k.T
                codes[:, rows] = c.transpose(0, 1).to(store) if on_gpu else c.transpose(1, 0, 2)
            bar.update(chunk.shape[0])
        bar.close()
        if on_gpu:
            ids = torch.arange(n_old, n_old + n, dtype=torch.int64, device=t.device).expand(b, n).contiguous()
        else:
            ids = np.broadcast_to(np.arange(n_old, n_old + n, dtype=np.int64), (b, n)).copy()
        # on the CPU the batch is sorted alone and merged into the sorted tables (O(total) copies, no
        # sort of the whole index); the GPU sorts everything again (CUB), its tables being device arrays
        merge_into = old if old is not None and self.store_codes and not on_gpu else None
        if old is not None and self.store_codes and on_gpu:
            keys, codes, ids = _concat_rows(old, keys, codes, ids)
        # keys/codes/ids are this call's own buffers: the engine may sort the codes in place.  With
        # codes stored, the bucket statistics wait until a "light"/"squared" lookup or to() needs
        # them (_engine.ensure_statistics; save() writes the codes only): they double the memory add() writes.
        new = _engine.build_tables(keys, codes, ids, keep_codes=self.store_codes, n_threads=self.n_threads,
                                   in_place=True, with_stats=not self.store_codes,
                                   with_directory=merge_into is None)
        if merge_into is not None:
            new = _engine.merge_tables(merge_into, new, n_threads=self.n_threads)
        if not self.store_codes:
            # statistics only: no per-item ids either (memory and disk of the buckets alone, and
            # the same tables whether the rows came in one add() or several)
            new["ids"] = None
            if old is not None:
                new = _merge_statistics(old, new)
        self._tables = new  # one reference swap: concurrent score() sees old or new, never a mix
        return self

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def table_distances(self, queries, mode: Optional[str] = None, *, n_probes: int = 1,
                        miss_probes: int = 0) -> np.ndarray:
        """(M, n_tables) distances of each query to its bucket in each table.

        n_probes > 1 (an extension; 1 is the paper): per table, also probe the buckets of the
        query's key with one or two of its least confident bits flipped, and take the smallest
        distance over the probed buckets that exist (llsh_index.probing).
        miss_probes = P > n_probes (an extension; 0, off, is the paper): a query that misses every
        table is looked up again with P probes per table, and only such a query; its row then
        holds those distances.  The paper gives it miss_value in every table.
        """
        return self._table_distances(queries, mode, n_probes, miss_probes, None)

    def _table_distances(self, queries, mode, n_probes, miss_probes, miss):
        """table_distances(), a missing bucket given `miss` (None: the index's miss value)."""
        n_probes, miss_probes = probing.check_probes(n_probes, miss_probes)
        tables = self._tables  # snapshot: an add() running meanwhile swaps in a new dict
        if self.encoder is None or tables is None:
            raise NotFittedError("score / table_distances: the index is empty; call add(features) first")
        mode = self.mode if mode is None else mode
        check_mode(mode)
        if mode == "mean" and tables["codes"] is None:
            raise ConfigError("mode: 'mean' needs the per-item codes, but this index keeps bucket statistics "
                              "only (store_codes=False); use 'light' or 'squared'")
        t = self._features(queries, "queries")
        miss = self.default_miss_value(mode) if miss is None else miss
        out, compared = [], [0]

        def lookup(c, k, miss_value):
            d, n_cmp = _engine.lookup(tables, c, k, _engine.MODES[mode], miss_value, self.n_threads)
            compared[0] = None if n_cmp is None or compared[0] is None else compared[0] + n_cmp
            return d

        probes = max(n_probes, miss_probes)
        buf = self._chunk_buffer(t, probes)  # a chunk's codes are looked up before the next overwrites them
        for i, chunk in self._chunks(t, probes):
            c, k = self._encode_chunk(chunk, "queries", i, buf=buf)
            if n_probes == 1 and not miss_probes:  # the paper
                out.append(lookup(c, k, miss))
            else:  # one engine lookup per probe rank (llsh_index.probing)
                out.append(probing.probed_distances(c, k, n_probes, miss_probes,
                                                    lambda cc, kk, _rows: lookup(cc, kk, math.inf), miss))
        self.last_n_compared = None if _engine.on_device(t) else compared[0]
        return torch.cat(out) if _engine.on_device(t) else np.concatenate(out)

    def score(self, queries, mode: Optional[str] = None, *, n_probes: int = 1, miss_probes: int = 0,
              reduce: str = "min") -> np.ndarray:
        """(M,) anomaly scores: the minimum over tables of table_distances() (n_probes, miss_probes:
        see there).  reduce="mean" (an extension; "min" is the paper): the mean over the tables whose
        bucket exists instead, miss_value for a query that hits none (reduce_tables)."""
        if check_reduce(reduce) == "min":
            d = self.table_distances(queries, mode, n_probes=n_probes, miss_probes=miss_probes)
            return d.min(dim=1).values if isinstance(d, torch.Tensor) else d.min(axis=1)
        d = self._table_distances(queries, mode, n_probes, miss_probes, math.inf)
        return reduce_tables(d, reduce, self.default_miss_value(self.mode if mode is None else mode))

    @torch.no_grad()
    def search(self, queries, k: int = 1):
        """The k nearest stored items of each query among its LSH candidates (ours: the paper scores
        a bucket as a whole; this names items, e.g. the normal snippets closest to an anomalous one).
        Candidates are the items that share the query's bucket in at least one table; they are
        ranked by the L2 distance between the query's and the item's whole real-valued codes (all
        n_tables * n_bits values, the space MoCo trains), which ranks neighbours far better than one
        table's n_bits values do (benchmarks/RESULTS.md, "Nearest stored items").

        Returns (distances (M, k) float32, ascending, ids (M, k) int64): item ids as remove_ids()
        takes them (rows in the order of add()); ties go to the smaller id; a query with fewer than k
        candidates is padded with inf / -1, as faiss pads.  numpy on the CPU, tensors on a GPU.
        Needs the stored codes (store_codes=True)."""
        k = check_int_range(k, "k", 1)
        tables = self._require_tables()
        _require_codes(self, "search")
        codes, keys = self.hash_queries(queries)
        return self._search_hashed(tables, codes, keys, k)

    def _search_hashed(self, tables, codes, keys, k: int):
        """search() of queries hashed already (hash_queries' output on the tables' device), against
        `tables` (read once by the caller); ShardedIndex.search runs it per shard."""
        dist, ids = _nearest_candidates(tables, _as_tensor(codes), _as_tensor(keys), k)
        return (dist, ids) if isinstance(codes, torch.Tensor) else (dist.numpy(), ids.numpy())

    # ------------------------------------------------------------------ shards
    def _check_same_layers(self, other: "LearnableLSHIndex") -> None:
        if not isinstance(other, LearnableLSHIndex):
            raise ConfigError(f"merge: expected a LearnableLSHIndex, got {type(other).__name__}")
        mine = (self.dim, self.n_tables, self.n_bits, self.code_dtype, self.store_codes)
        theirs = (other.dim, other.n_tables, other.n_bits, other.code_dtype, other.store_codes)
        if mine != theirs:
            raise ConfigError(f"merge: expected an index with (dim, n_tables, n_bits, code_dtype, store_codes) = "
                              f"{mine}, got {theirs}")
        if self.encoder is None or other.encoder is None:
            raise NotFittedError("merge: an index without hash layers yet (no fit() or add()) has nothing to share; "
                                 "give the indexes their layers first")
        if not torch.equal(
                self.encoder.weight.detach().cpu(), other.encoder.weight.detach().cpu()):
            raise ConfigError("merge: the indexes must share the same hash layers (train once, then copy the "
                              "layers to every shard, e.g. with save()/load() before add())")
        if self.feature_space_ is not None and other.feature_space_ is not None:
            from .video import feature_space_mismatch  # video imports this module

            why = feature_space_mismatch(self.feature_space_, other.feature_space_, ("this index", "the other"))
            if why:
                raise ConfigError(f"merge: expected items of features made alike, got indexes built on features "
                                  f"made otherwise ({why})")

    def merge(self, other: "LearnableLSHIndex") -> "LearnableLSHIndex":
        """Appends the items of `other` (same hash layers) after this index's items, in place.

        The result is exactly the index that one add() of this index's data followed by other's
        would give: other's item ids are shifted by self.ntotal and the two sorted tables merged by
        (key, id).
        """
        self._check_same_layers(other)
        theirs = other._tables
        if theirs is None:
            return self
        with self._write_lock:
            mine = self._tables
            if mine is None:
                if _normalise_device(other.device) != self.device:
                    _engine.ensure_statistics(theirs, other.n_threads)  # every engine off the CPU expects them
                    self._tables = {k: _move(v, self.device) for k, v in theirs.items()}  # a copy on our device
                else:
                    self._tables = {k: (v.copy() if hasattr(v, "copy") else v.clone() if isinstance(v, torch.Tensor)
                                        else v) for k, v in theirs.items()}
                return self
            if not self.store_codes:
                self._tables = _merge_statistics(mine, theirs)
                return self
            self._set_merged_tables([mine, theirs])
        return self

    def _set_merged_tables(self, parts) -> None:
        """self._tables = the union of `parts` (tables that keep codes, in item order), merged on the host
        (sorted runs, no sort) neighbour with neighbour, level by level, then placed on this index's
        device.  Under the write lock."""
        parts = [{k: _to_numpy(v) for k, v in t.items()} for t in parts]
        while len(parts) > 1:
            last = len(parts) == 2  # only the final tables are looked up: the others need no directory
            nxt = [_engine.merge_tables(parts[k], parts[k + 1], b_id_shift=int(parts[k]["n_items"]),
                                        n_threads=self.n_threads, with_directory=last)
                   for k in range(0, len(parts) - 1, 2)]
            parts = nxt + parts[len(nxt) * 2:]
        merged = parts[0]
        if self.device != "cpu":
            _engine.ensure_statistics(merged, self.n_threads)
        self._tables = {k: _move(v, self.device) for k, v in merged.items()}

    def _merge_many(self, indexes: Iterable["LearnableLSHIndex"]) -> "LearnableLSHIndex":
        """merge() of each index in turn, in one step.  With codes stored, neighbours' tables are merged
        pairwise, level by level: O(total x log S) copies for S indexes, where S merges one after another
        copy O(total x S).  Exactly the tables of the merges in turn (the layout is canonical)."""
        indexes = list(indexes)
        tables = [i._tables if isinstance(i, LearnableLSHIndex) else None for i in indexes]  # each read once
        filled = [t for t in tables if t is not None]
        # self in the list: in turn, it merges itself as grown by then; merge() one by one does that
        if (not self.store_codes or len(filled) + (self._tables is not None) < 3
                or any(i is self for i in indexes)):
            for index in indexes:
                self.merge(index)
            return self
        for index in indexes:
            self._check_same_layers(index)
        with self._write_lock:
            self._set_merged_tables(filled if self._tables is None else [self._tables] + filled)
        return self

    def empty_like(self, **overrides) -> "LearnableLSHIndex":
        """A new, empty index with the same (trained) hash layers and settings, some overridden.

        E.g. index.empty_like(mode="light", store_codes=False) for light-LLSH on the same layers,
        or one empty shard per worker.  Overridable: mode, miss_value, code_dtype, store_codes,
        batch_size, n_threads.
        """
        allowed = {"mode", "miss_value", "code_dtype", "store_codes", "batch_size", "n_threads"}
        bad = sorted(set(overrides) - allowed)
        if bad:
            raise ConfigError(f"empty_like: expected overrides among {sorted(allowed)}, got {bad}")
        if self.encoder is None:
            raise NotFittedError("empty_like: the index has no hash layers yet (no fit() or add())")
        settings = dict(mode=self.mode, miss_value=self.miss_value, code_dtype=self.code_dtype,
                        store_codes=self.store_codes, batch_size=self.batch_size, n_threads=self.n_threads)
        settings.update(overrides)
        out = type(self)(self.dim, self.n_tables, self.n_bits, seed=self.seed, **settings)
        out.encoder.weight.data.copy_(self.encoder.weight.detach().cpu())
        out.training_log_ = self.training_log_
        out.training_config_ = self.training_config_
        out.feature_space_ = None if self.feature_space_ is None else dict(self.feature_space_)
        return out.to(self.device) if self.device != "cpu" else out

    @classmethod
    def merge_all(cls, indexes) -> "LearnableLSHIndex":
        """A new index holding the items of every index in order (all share the same hash layers)."""
        if not isinstance(indexes, Iterable) or isinstance(indexes, (str, bytes)):
            raise ConfigError(f"merge_all: expected an iterable of LearnableLSHIndex, got {type(indexes).__name__}")
        indexes = list(indexes)
        if not indexes:
            raise ConfigError("merge_all: expected at least one index, got none")
        _check_indexes(indexes, "merge_all")
        return indexes[0].empty_like()._merge_many(indexes)

    def remove_ids(self, ids) -> int:
        """Removes items from the index; returns how many it removed.

        ids: item ids (an item's id is its row in the order of add(): 0 .. ntotal - 1), as integers,
        or a boolean mask of ntotal values (True = remove).  Repeated ids count once.  The items left
        keep their order and are renumbered 0 .. ntotal - removed - 1, as faiss's flat indexes do, so
        the tables are exactly those one add() of the remaining rows gives (a sliding window of
        normal video: ``index.remove_ids(range(k))`` forgets the k oldest rows).  Needs the stored
        codes: a statistics-only index (store_codes=False) cannot take a removed item's code out of
        its bucket's sums.
        """
        with self._write_lock:
            tables = self._tables
            n = 0 if tables is None else int(tables["n_items"])
            drop = _removal_mask(ids, n)
            if not drop.any():
                return 0
            _require_codes(self, "remove_ids")
            removed = int(drop.sum())
            if removed == n:
                self._tables = None
                return removed
            on_device = isinstance(tables["codes"], torch.Tensor)
            # on the host: the native engine copies the kept runs (a device copy goes back below)
            host = _engine.remove_items({k: _to_numpy(v) for k, v in tables.items()}, ~drop, self.n_threads,
                                        with_directory=not on_device)
            if on_device:  # device tables go back where they were
                _engine.ensure_statistics(host, self.n_threads)  # every engine off the CPU expects them
                device = tables["codes"].device
                host = {k: (torch.from_numpy(v).to(device) if isinstance(v, np.ndarray) else v)
                        for k, v in host.items()}
            self._tables = host  # one swap, as add(): a concurrent score sees the old tables or these
            return removed

    @torch.no_grad()
    def hash_queries(self, queries):
        """(codes (M, b, r) float32, keys (M, b) uint64) of `queries`, on this index's device.

        The hashed form partial_scores(query_codes=..., query_keys=...) takes: hash once, then send
        b*r floats + b keys per query to every shard instead of the d features.
        """
        encoder, t = self._layers_and_features(queries, "hash_queries", "queries")
        parts = [self._encode_chunk(c, "queries", i, encoder=encoder) for i, c in self._chunks(t)]
        if len(parts) == 1:
            return parts[0]
        if _engine.on_device(t):  # keys joined as int64 bits: torch's uint64 support is limited to a few ops
            return (torch.cat([p[0] for p in parts]),
                    torch.cat([p[1].view(torch.int64) for p in parts]).view(torch.uint64))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _check_query_codes(self, codes, keys, tables):
        """Pre-hashed queries as the engine takes them: on the tables' device, float32 / uint64, shapes."""
        b, r = self.n_tables, self.n_bits
        on_dev = _engine.on_device(tables["keys"])
        where = str(tables["keys"].device) if on_dev else "cpu"
        out = []
        for name, x, dtypes in (("query_codes", codes, ("float32",)), ("query_keys", keys, ("uint64",))):
            if isinstance(x, torch.Tensor):
                got = "cpu" if x.device.type == "cpu" else str(x.device)
                if (on_dev and x.device != tables["keys"].device) or (not on_dev and x.device.type != "cpu"):
                    raise DeviceMismatchError(f"{name}: expected data on {where} (the shard's tables), got data on "
                                              f"{got}")
                dtype = str(x.dtype).replace("torch.", "")
            elif isinstance(x, np.ndarray):
                if on_dev:
                    raise DeviceMismatchError(f"{name}: expected a tensor on {where} (the shard's tables), got a "
                                              "numpy array on cpu")
                dtype = x.dtype.name
            else:
                raise InvalidDTypeError(f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__}")
            if dtype not in dtypes:
                raise InvalidDTypeError(f"{name}: expected {dtypes[0]} (as hash_queries() returns), got {dtype}")
            out.append(x)
        codes, keys = out
        m = int(codes.shape[0]) if codes.ndim == 3 else -1
        if codes.ndim != 3 or tuple(codes.shape[1:]) != (b, r) or m < 1:
            raise InvalidInputError(f"query_codes: expected shape (M >= 1, {b}, {r}), got {tuple(codes.shape)}")
        if tuple(keys.shape) != (m, b):
            raise InvalidInputError(f"query_keys: expected shape ({m}, {b}), got {tuple(keys.shape)}")
        if r < 64:  # a key has n_bits bits: one above them matches no bucket, and every such query would miss
            # torch has no uint64 shift: the same bits as int64 (the sign bit shifts in, still != 0)
            high = (keys.view(torch.int64) >> r) != 0 if isinstance(keys, torch.Tensor) else (keys >> np.uint64(r)) != 0
            if bool(high.any()):
                raise InvalidInputError(f"query_keys: expected {r}-bit keys (below 2**{r}, as hash_queries() returns), "
                                        f"got {int(high.sum())} with higher bits set")
        # hash_queries() gives sigmoid outputs, in [0, 1]; anything else (NaN included) is not a code
        if isinstance(codes, torch.Tensor):
            valid = bool(((codes >= 0) & (codes <= 1)).all())
            if not on_dev:  # a CPU tensor: the CPU engine takes numpy
                codes, keys = codes.numpy(), keys.numpy()
        else:
            valid = bool(codes.size == 0 or (codes.min() >= 0 and codes.max() <= 1))
        if not valid:
            raise InvalidInputError("query_codes: expected sigmoid codes in [0, 1] (as hash_queries() returns), got "
                                    "values outside it or NaN")
        if isinstance(codes, torch.Tensor):
            return codes.contiguous(), keys.contiguous()
        return np.ascontiguousarray(codes), np.ascontiguousarray(keys)

    @torch.no_grad()
    def partial_scores(self, queries=None, mode: Optional[str] = None, *, query_codes=None,
                       query_keys=None) -> Dict[str, np.ndarray]:
        """This shard's partial sums per (query, table), to be combined by combine_partial_scores().

        Returns {"count": (M, b) int64 bucket sizes (0 on a miss), "sum": (M, b) float64 sums of
        distances ("mean") or squared distances ("squared")}; for "light", "sum" is the (M, b, r)
        float64 sum of the bucket's codes, from which the combiner forms the mean code.  The arrays
        are numpy on the host, whichever device holds the tables (CPU or GPU).

        Either `queries` (features, hashed here; "light" then also returns their "query_codes"), or
        the pre-hashed `query_codes` and `query_keys` of hash_queries(), on this shard's device: a
        sharded index hashes once and sends the codes to every shard (pass the codes to the combiner
        for "light").
        """
        tables = self._tables
        if self.encoder is None or tables is None:
            raise NotFittedError("partial_scores: the index is empty; call add(features) first")
        mode = self.mode if mode is None else mode
        check_mode(mode)
        if tables["codes"] is None and mode == "mean":
            raise ConfigError("mode: 'mean' needs the per-item codes (store_codes=True)")
        hashed = query_codes is not None or query_keys is not None
        if hashed == (queries is not None) or hashed and (query_codes is None or query_keys is None):
            raise ConfigError("partial_scores: expected either queries, or both query_codes and query_keys "
                              f"(got queries={queries is not None}, query_codes={query_codes is not None}, "
                              f"query_keys={query_keys is not None})")
        on_dev = _engine.on_device(tables["keys"])
        if hashed:
            batches = [self._check_query_codes(query_codes, query_keys, tables)]
        else:
            t = self._features(queries, "queries")
            batches = (self._encode_chunk(c, "queries", i) for i, c in self._chunks(t))
        if mode != "mean":
            _engine.ensure_statistics(tables, self.n_threads)  # once, into the index (not into a host copy)
        src = tables if on_dev else {k: _to_numpy(v) for k, v in tables.items()}
        counts, sums, codes_all = [], [], []
        for c, k in batches:
            if mode == "light":
                cnt, s = _bucket_code_sums(src, k)
                codes_all.append(c)
            else:
                _, _, s, cnt = _engine.lookup(src, c, k, _engine.MODES[mode], 0.0, self.n_threads, partial=True)
            counts.append(cnt)
            sums.append(s)
        cat = (lambda xs: _to_numpy(torch.cat(xs))) if on_dev else np.concatenate  # one device-to-host copy
        out = {"count": cat(counts), "sum": cat(sums), "mode": mode}
        if mode == "light" and not hashed:
            out["query_codes"] = cat(codes_all)
        return out

    def combine_partial_scores(self, parts, mode: Optional[str] = None, return_distances: bool = False, *,
                               query_codes=None, reduce: str = "min", miss_value: Optional[float] = None):
        """Scores from the partial sums of several shards (same queries, same hash layers).

        Per (query, table): distance = sum of sums / sum of counts, the exact value one index over
        all shards' items gives; a miss (zero count in every shard) gives miss_value (None: the
        index's; math.inf marks the misses, as llsh_index.probing takes table distances).  "light"
        needs the (M, b, r) query codes: `query_codes`, else the first part's "query_codes".
        reduce: over the tables, as score() ("mean": over the tables that hit).
        """
        check_reduce(reduce)
        miss_value = _check_miss_value(miss_value, allow_inf=True)
        if not isinstance(parts, Iterable) or isinstance(parts, Mapping):
            raise InvalidInputError(f"combine_partial_scores: expected a list of partial_scores() results, got "
                                    f"{type(parts).__name__}")
        parts = list(parts)
        if not parts:
            raise ConfigError("combine_partial_scores: expected partial scores of at least one shard")
        counts, totals = _check_parts(parts)  # as numpy, once: a device shard's parts are copied here
        mode = check_mode(parts[0]["mode"] if mode is None else mode, "combine_partial_scores: mode")
        if any(p["mode"] != mode for p in parts):
            raise ConfigError(f"combine_partial_scores: every shard must use mode {mode!r}, got "
                              f"{[p['mode'] for p in parts]}")
        shape = counts[0].shape
        if shape[1] != self.n_tables or (mode == "light" and totals[0].shape[2] != self.n_bits):
            raise InvalidInputError(f"combine_partial_scores: expected count (M, {self.n_tables}) and sum "
                                    f"{f'(M, {self.n_tables}, {self.n_bits})' if mode == 'light' else f'(M, {self.n_tables})'}"
                                    f" (this index's tables and bits), got {shape} and {totals[0].shape}")
        for i, (c, t) in enumerate(zip(counts, totals)):
            if c.shape != shape or t.shape != totals[0].shape:
                raise InvalidInputError(f"combine_partial_scores: shard {i} answered count {c.shape} and sum "
                                        f"{t.shape}, expected count {shape} like shard 0 (the same queries)")
        count = sum(counts)
        total = sum(totals)
        hit = count > 0
        miss = self.default_miss_value(mode) if miss_value is None else miss_value
        mean_over_hits = reduce == "mean" and not return_distances  # reduce_tables wants the misses at +inf
        dist = np.full(count.shape, math.inf if mean_over_hits else miss, dtype=np.float64)
        if mode == "light":
            q = parts[0].get("query_codes") if query_codes is None else query_codes
            if q is None:
                raise ConfigError("combine_partial_scores: 'light' needs the query codes (pass query_codes=, "
                                  "e.g. from hash_queries())")
            q = np.asarray(_to_numpy(q))
            if q.dtype.kind != "f":
                raise InvalidDTypeError(f"combine_partial_scores: query_codes: expected float codes, got "
                                        f"{type(q).__name__ if q.ndim == 0 else q.dtype}")
            q = q.astype(np.float64)
            if q.shape != total.shape:
                raise InvalidInputError(f"combine_partial_scores: query_codes of shape {q.shape}, expected "
                                        f"{total.shape}")
            # as partial_scores(query_codes=) checks them: NaN or codes beyond [0, 1] gave NaN or distances
            # far above the miss value, silently (NaN fails both comparisons)
            if q.size and not (q.min() >= 0 and q.max() <= 1):
                n_nan = int(np.isnan(q).sum())
                raise InvalidInputError("combine_partial_scores: query_codes: expected sigmoid codes in [0, 1] (as "
                                        "hash_queries() returns), got "
                                        + (f"{n_nan} NaN" if n_nan else f"values from {q.min():g} to {q.max():g}"))
            mean_code = total[hit] / count[hit][:, None]
            dist[hit] = np.sqrt(((q[hit] - mean_code) ** 2).sum(axis=1))
        else:
            dist[hit] = total[hit] / count[hit]
            if mode == "squared":
                dist[hit] = np.maximum(dist[hit], 0.0)
        dist = dist.astype(np.float32)
        if return_distances:
            return dist
        return reduce_tables(dist, reduce, miss) if mean_over_hits else dist.min(axis=1)

    # ------------------------------------------------------------------ inspection
    def bucket_sizes(self, table: int = 0) -> np.ndarray:
        """Sizes of the buckets of one table, in key order."""
        tables = self._require_tables()
        check_int_range(table, "table", 0, self.n_tables - 1)
        ts = _to_numpy(tables["table_start"])
        off = _to_numpy(tables["offsets"])
        return np.diff(off[ts[table]:ts[table + 1] + 1])

    def stats(self) -> dict:
        """Per-table occupancy, lists of n_tables values: ``n_buckets``; ``largest_bucket``;
        ``mean_bucket_seen_by_item`` (the mean size of an item's own bucket: the cost of a
        hit); ``active_bits``, how many of the n_bits key bits take both values among the
        indexed items (trained layers often keep few: the rest are constant, and a query
        whose constant bit flips misses the table)."""
        tables = self._require_tables()
        return table_occupancy([[part] for part in _keys_and_sizes(tables)], self.ntotal)

    def largest_hit_distance(self, rows, mode: Optional[str] = None) -> float:
        """The largest distance `rows` have in a table where their bucket exists (misses left out): with
        the training rows, the edge of what normal data scores.  As miss_value (ours, not the paper's
        "large value"; index.empty_like(miss_value=...)) it keeps a query that misses every table from
        scoring 15-20 times any hit, a peak that squashed the rest of its video in micro-AUC's per-video
        min-max normalisation: +4 points micro-AUC on the Ped2 demo over 10 seeds, LSH and LLSH alike
        (benchmarks/RESULTS.md, "the miss value").  mode: as score()'s."""
        d = _to_numpy(self._table_distances(rows, mode, 1, 0, math.inf))  # one state of the tables; a miss: inf
        hit = np.isfinite(d)  # codes lie in [0, 1]^r: every hit's distance is finite
        if not hit.any():
            raise InvalidInputError(f"largest_hit_distance: expected rows that find a bucket in some table, got "
                                    f"{len(d)} rows that miss every table")
        return float(d[hit].max())

    def query_bucket_sizes(self, queries) -> np.ndarray:
        """(M, n_tables) int64: the size of each query's bucket in each table, 0 where the table
        has no bucket for its key (a miss: the paper's score takes miss_value there, and a query
        with a row of zeros scores miss_value).  A diagnostic, NumPy on the host."""
        tables = self._require_tables()  # one snapshot of the tables; an add() meanwhile swaps in new ones
        qkeys = _to_numpy(self._encode_all(queries, "query_bucket_sizes", "queries")[1])
        return bucket_sizes_of_keys(_keys_and_sizes(tables), qkeys)

    def _require_tables(self) -> Dict:
        tables = self._tables  # read once: a concurrent reset() / remove_ids() may drop them meanwhile
        if tables is None:
            raise NotFittedError("the index is empty; call add(features) first")
        return tables

    def memory_bytes(self) -> int:
        """Bytes held by the tables (not counting the hash layers), with the CPU lookup directory
        derived from the keys (built with the tables, or on the first lookup after load()) and the
        item-to-row map the first search() derives from the ids."""
        t = self._tables
        if t is None:
            return 0
        return _engine.directory_nbytes(t) + _ITEM_ROWS.nbytes(t.get("ids")) + sum(
            int(v.nbytes) if isinstance(v, np.ndarray) else int(v.numel() * v.element_size())
            for k, v in t.items() if k != "n_items" and v is not None)

    # ------------------------------------------------------------------ devices
    def to(self, device: str) -> "LearnableLSHIndex":
        """Moves the hash layers and the tables to `device` ("cpu" or "cuda[:N]"); returns self."""
        device = _normalise_device(device)
        _require_cuda(device, f"to({device!r})")
        with self._write_lock:
            if device == self.device:  # nothing moves; the CPU engine builds statistics only when a mode needs them
                return self
            if self.encoder is not None:
                self.encoder.to(device)
            if self._tables is not None:
                _engine.ensure_statistics(self._tables, self.n_threads)  # the GPU engine expects them
                self._tables = {k: _move(v, device) for k, v in self._tables.items()}
            self.device = device
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, path: str) -> int:
        """Saves hash layers, tables and settings (no pickle, atomic).  Returns the file size."""
        return self._save(path)

    def _save(self, path: str, digest=None) -> int:
        """save(); digest: a hashlib object fed the bytes written (shard lists, llsh_index.sharded)."""
        if self.encoder is None:
            raise NotFittedError("save: the index has no hash layers yet (no fit() or add())")
        _check_feature_space(self.feature_space_)
        meta = {"dim": self.dim, "n_tables": self.n_tables, "n_bits": self.n_bits, "mode": self.mode,
                "miss_value": self.miss_value, "code_dtype": self.code_dtype, "store_codes": self.store_codes,
                "seed": self.seed, "batch_size": self.batch_size, "n_threads": self.n_threads,
                "trained": self.is_trained, "training_steps": 0 if self.training_log_ is None else
                self.training_log_.steps, "positives": None if self.training_log_ is None else
                self.training_log_.positives, "projected_pcs": None if self.training_log_ is None else
                self.training_log_.projected_pcs, "has_tables": self._tables is not None,
                "training_config": None if self.training_config_ is None else dataclasses.asdict(self.training_config_),
                "feature_space": self.feature_space_}
        arrays = {"weight": self.encoder.weight.detach().cpu().numpy()}
        if self.training_log_ is not None:
            arrays["losses"] = np.asarray(self.training_log_.losses, dtype=np.float64)
            arrays["lrs"] = np.asarray(self.training_log_.lrs, dtype=np.float64)
        tables = self._tables
        if tables is not None:
            meta["n_items"] = int(tables["n_items"])
            narrowed = {}
            for k, v in tables.items():
                if k == "n_items" or v is None:
                    continue
                if k in _STATISTICS and tables.get("codes") is not None:
                    continue  # derived again from the codes when first needed, bit for bit (format 2)
                a = _to_numpy(v)
                small = _narrow(k, a, self.n_bits)
                if small.dtype != a.dtype:
                    narrowed["t_" + k] = a.dtype.name
                arrays["t_" + k] = small
            meta["narrowed"] = narrowed
        return write_container(path, _FILE_KIND, meta, arrays, digest=digest)

    @classmethod
    def load(cls, path: str, device: str = "cpu", *, mmap: bool = False) -> "LearnableLSHIndex":
        """Loads a file written by save(), on either device.

        mmap=True (CPU only): the stored codes, the bulk of an index (b x N x r values), stay a
        read-only view of a memory map of the file, shared through the page cache by every process
        that maps it, instead of a private copy.  The other arrays (ids, keys, offsets, hash layers;
        the bucket statistics of a store_codes=False index, which has no codes) are read into memory
        as by a normal load.  Every check of a normal load runs (the checksums and table checks read
        the file through the page cache).  The index then works as a loaded one, bit for bit (add()
        and merge() build new tables beside the mapped ones).  The file must not be modified in place
        while mapped; save() never does (it writes a new file and renames it over the old one, so
        saving to the very path it is mapped from is safe).  A file written before llsh_index aligned
        its arrays may hold codes unaligned for their dtype: they are copied, with a warning.
        """
        mmap = check_bool(mmap, "mmap")
        if mmap and _normalise_device(device) != "cpu":
            raise ConfigError(f"load: mmap=True maps the file into this host's memory; expected device='cpu', got "
                              f"{device!r} (load with mmap=False to copy the index to {device!r})")
        meta, arrays = read_container(path, _FILE_KIND, mmap=mmap)
        if mmap:  # layers and training record: copied into the index anyway (and torch wants writeable arrays)
            arrays = {k: (v if k.startswith("t_") else np.array(v)) for k, v in arrays.items()}
        try:
            # the stored weight must match the settings before anything is allocated from them
            shape = (int(meta["n_tables"]) * int(meta["n_bits"]), int(meta["dim"]))
            if "weight" not in arrays or arrays["weight"].shape != shape:
                raise IndexFormatError(f"{path}: hash weight of shape {arrays.get('weight', np.zeros(0)).shape} "
                                       f"does not match the settings {shape}")
            seed = meta["seed"]
            if isinstance(seed, int) and not isinstance(seed, bool) and -(2 ** 63) <= seed < 2 ** 64:
                seed %= SEED_MAX + 1  # older versions took torch's wider range, of which torch keeps these bits
            index = cls(meta["dim"], meta["n_tables"], meta["n_bits"], mode=meta["mode"],
                        miss_value=meta["miss_value"], code_dtype=meta["code_dtype"],
                        store_codes=meta["store_codes"], seed=seed, batch_size=meta["batch_size"],
                        n_threads=meta["n_threads"])
            weight = arrays["weight"]
            if weight.shape != (index.n_tables * index.n_bits, index.dim):
                raise IndexFormatError(f"{path}: hash weight of shape {weight.shape} does not match the settings")
            if weight.dtype != np.float32:  # save() writes float32; an integer weight hashed every row alike
                raise IndexFormatError(f"{path}: hash weight: expected float32, got {weight.dtype}")
            if not np.isfinite(weight).all():  # every score would be NaN, blamed on the queries
                raise IndexFormatError(f"{path}: the hash weight holds NaN or Inf")
            if not _usable_layers(torch.from_numpy(weight)):  # fit()'s check: saturated codes, overflowing logits
                norm = float(np.linalg.norm(weight.astype(np.float64), axis=1).max())
                raise IndexFormatError(f"{path}: the hash weight is finite but too large for float32 logits (row "
                                       f"norm up to {norm:.3g}); expected layers as fit() leaves them")
            index.encoder.weight.data.copy_(torch.from_numpy(weight))
            if meta.get("trained"):
                losses, steps = arrays.get("losses", np.zeros(0)), meta.get("training_steps", 0)
                positives = meta.get("positives") or "temporal"
                if losses.ndim != 1 or losses.dtype.kind != "f":
                    raise IndexFormatError(f"{path}: training losses: expected a 1-D float array, got {losses.dtype} "
                                           f"of shape {losses.shape}")
                if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0 or not isinstance(positives, str):
                    raise IndexFormatError(f"{path}: training record: expected training_steps an integer >= 0 and "
                                           f"positives a string, got {steps!r} and {positives!r}")
                # lrs and projected_pcs: absent from files written before they were saved (lrs unknown: NaN,
                # one per loss, so a continued fit's log and its file keep one lr per loss; pcs 0)
                lrs, pcs = arrays.get("lrs", np.full(losses.shape[:1], np.nan)), meta.get("projected_pcs") or 0
                if lrs.ndim != 1 or lrs.dtype.kind != "f" or lrs.size != losses.size:
                    raise IndexFormatError(f"{path}: training learning rates: expected a 1-D float array of one per "
                                           f"logged loss ({losses.size}), got {lrs.dtype} of shape {lrs.shape}")
                if isinstance(pcs, bool) or not isinstance(pcs, int) or pcs < 0:
                    raise IndexFormatError(f"{path}: training record: expected projected_pcs an integer >= 0, got "
                                           f"{pcs!r}")
                index.training_log_ = TrainingLog(losses=losses.tolist(), lrs=lrs.tolist(), steps=steps,
                                                  positives=positives, projected_pcs=pcs)
            if meta.get("training_config") is not None:  # absent from files written before it was saved
                index.training_config_ = _training_config_from(meta["training_config"], path)
            space = meta.get("feature_space")  # likewise; None: built from arrays
            if space is not None and not isinstance(space, dict):
                raise IndexFormatError(f"{path}: feature space: expected a JSON object or null, got "
                                       f"{type(space).__name__}")
            index.feature_space_ = space
            if not meta.get("has_tables") and any(k.startswith("t_") for k in arrays):
                raise IndexFormatError(f"{path}: inconsistent index file (tables stored, but marked as having none)")
            if meta.get("has_tables"):
                _widen(arrays, meta.get("narrowed") or {}, path)
                tables = {k[2:]: v for k, v in arrays.items() if k.startswith("t_")}
                for k in ("codes", "ids") + _STATISTICS:
                    tables.setdefault(k, None)
                tables["n_items"] = int(meta["n_items"])
                if mmap:
                    _copy_all_but_codes(tables, path)
                _check_tables(tables, index, path)
                index._tables = tables
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            if isinstance(exc, IndexFormatError):
                raise
            raise IndexFormatError(f"{path}: inconsistent index file ({exc})") from exc
        return index.to(device) if device != "cpu" else index

    def __repr__(self) -> str:
        return (f"LearnableLSHIndex(dim={self.dim}, n_tables={self.n_tables}, n_bits={self.n_bits}, "
                f"mode={self.mode!r}, ntotal={self.ntotal}, trained={self.is_trained}, device={self.device!r})")


# ---------------------------------------------------------------------- helpers
REDUCTIONS = ("min", "mean")  # score(reduce=...): the paper's minimum over tables, or (ours) their mean


def check_mode(mode, what: str = "mode") -> str:
    if not isinstance(mode, str) or mode not in _engine.MODES:
        raise ConfigError(f"{what}: expected one of {sorted(_engine.MODES)}, got {mode!r}")
    return mode


def check_reduce(reduce) -> str:
    if reduce not in REDUCTIONS:
        raise ConfigError(f"reduce: expected one of {list(REDUCTIONS)}, got {reduce!r}")
    return reduce


def _check_parts(parts):
    """(counts, sums) of the parts as numpy arrays, each part checked as partial_scores() returns it:
    integer counts >= 0, finite sums (NaN sums or negative counts would combine into NaN or negative
    scores without a word)."""
    counts, totals = [], []
    for i, p in enumerate(parts):
        if not isinstance(p, Mapping):
            raise InvalidInputError(f"combine_partial_scores: part {i}: expected the mapping partial_scores() "
                                    f"returns, got {type(p).__name__}")
        missing = [k for k in ("mode", "sum", "count") if k not in p]
        if missing:
            raise InvalidInputError(f"combine_partial_scores: part {i} lacks {missing} (expected partial_scores()' "
                                    f"keys 'mode', 'sum', 'count')")
        count, total = np.asarray(_to_numpy(p["count"])), np.asarray(_to_numpy(p["sum"]))
        want = 3 if p["mode"] == "light" else 2  # light: the bucket sums of the codes; else of the distances
        if count.ndim != 2 or total.ndim != want:
            raise InvalidInputError(f"combine_partial_scores: part {i}: expected count (M, b) and sum "
                                    f"{'(M, b, r)' if want == 3 else '(M, b)'} for mode {p['mode']!r}, got "
                                    f"{count.shape} and {total.shape}")
        if count.dtype.kind not in "iu" or (count.size and count.min() < 0):
            raise InvalidInputError(f"combine_partial_scores: part {i}: expected counts that are integers >= 0, got "
                                    f"{count.dtype}{'' if count.dtype.kind not in 'iu' else f' down to {count.min()}'}")
        if total.dtype.kind != "f" or not np.isfinite(total).all():
            raise InvalidInputError(f"combine_partial_scores: part {i}: expected finite float sums, got "
                                    f"{total.dtype}{' with NaN or Inf' if total.dtype.kind == 'f' else ''}")
        counts.append(count)
        totals.append(total)
    return counts, totals


def _check_indexes(indexes, what: str) -> None:
    bad = [type(x).__name__ for x in indexes if not isinstance(x, LearnableLSHIndex)]
    if bad:
        raise ConfigError(f"{what}: expected LearnableLSHIndex objects, got {', '.join(sorted(set(bad)))}")


def _bad_row_error(name: str, row: torch.Tensor, index: int, source: Optional[torch.Tensor] = None
                   ) -> InvalidInputError:
    """The error for a row whose logits came out NaN: a NaN / Inf in it, finite values beyond float32
    (source: the row as given, before its float32 copy), or finite values too large for the float32
    LayerNorm (its variance overflows above ~1.8e19)."""
    if source is not None and source.dtype == torch.float64 and bool(torch.isfinite(source).all()):
        big = float(source.abs().max())
        if big > float(np.finfo(np.float32).max):
            return InvalidInputError(f"{name}: row {index} is finite but beyond float32's range (|x| up to "
                                     f"{big:.3g}); expected values below ~1e18, rescale the features")
    if bool(torch.isfinite(row).all()):
        big = float(row.abs().max())
        return InvalidInputError(f"{name}: row {index} is finite but too large to normalise in float32 (|x| up to "
                                 f"{big:.3g}: its variance overflows); expected values below ~1e18, rescale the "
                                 f"features")
    return InvalidInputError(f"{name}: expected finite values, got NaN or Inf in row {index}")


def _check_miss_value(miss_value, allow_inf: bool = False) -> Optional[float]:
    """None, or a finite number >= 0 within float32 range (scores are float32) as a float; allow_inf: also
    +inf, which marks the misses where table distances are combined (llsh_index.probing).  It stands
    for a distance: a negative one would rank a query that misses a table below every hit."""
    if miss_value is None:
        return None
    expected = f"a finite number >= 0 (a distance) within float32 range{' or +inf' if allow_inf else ''}"
    if not isinstance(miss_value, numbers.Real) or isinstance(miss_value, (bool, np.bool_)):
        raise ConfigError(f"miss_value: expected {expected}, got {miss_value!r}")
    try:
        value = float(miss_value)
    except OverflowError:  # an int beyond float64 (math.isfinite would raise it untyped)
        from ._validation import huge_int_words  # here: this function is the only part of index.py that needs it

        raise ConfigError(f"miss_value: expected {expected}, got {huge_int_words(miss_value)}") from None
    if not ((math.isfinite(value) and 0 <= value <= float(np.finfo(np.float32).max))
            or (allow_inf and value == math.inf)):
        raise ConfigError(f"miss_value: expected {expected}, got {miss_value!r}")
    return value


def reduce_tables(d, reduce: str, miss_value: float):
    """(M,) scores from (M, b) table distances that are +inf where the bucket is absent (numpy, or a
    tensor on any device): "min" the smallest, "mean" the mean over the tables that hit.  Averaging
    the b estimates instead of taking the luckiest one lowers their variance (benchmarks/RESULTS.md,
    "Mean over the tables"); a query that hits no table gets miss_value either way."""
    if isinstance(d, torch.Tensor):
        hit = torch.isfinite(d)
        s = (d.min(dim=1).values if reduce == "min"  # summed in float64 like the numpy branch: same scores
             else (torch.where(hit, d, torch.zeros_like(d)).sum(dim=1, dtype=torch.float64)
                   / hit.sum(dim=1).clamp_min(1)).to(d.dtype))
        return s.masked_fill_(~hit.any(dim=1), miss_value)
    hit = np.isfinite(d)
    if reduce == "min":
        s = d.min(axis=1)
    else:
        s = (np.where(hit, d, 0).sum(axis=1, dtype=np.float64) / np.maximum(hit.sum(axis=1), 1)).astype(d.dtype)
    s[~hit.any(axis=1)] = miss_value
    return s


def probed_scores(codes, keys, n_probes: int, miss_probes: int, reduce: str, distances, miss_value: float,
                  return_distances: bool):
    """The sharded indexes' probed path and LLSHDetector's leave-one-out scores: (M, b) table
    distances (return_distances) or (M,) scores reduced over the tables, from distances(codes, keys,
    rows) -> +inf where the bucket is absent (probing.probed_distances)."""
    d = probing.probed_distances(codes, keys, n_probes, miss_probes, distances,
                                 miss_value if reduce == "min" else math.inf)
    if reduce == "min":
        return d if return_distances else d.min(axis=1)
    if return_distances:
        return probing.fill_misses(d, miss_value)
    return reduce_tables(d, reduce, miss_value)


def _normalise_device(device) -> str:
    device = str(device)
    if device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise ConfigError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _require_cuda(device: str, what: str) -> None:
    """CudaUnavailableError, instead of torch's untyped error at the first .to(device), when `device` is
    a CUDA device the CUDA engine cannot use here (no CUDA build or device, or an ordinal not visible)."""
    if not device.startswith("cuda"):
        return
    from . import cuda_available

    ok, why = cuda_available(verbose=True)
    if not ok:
        raise CudaUnavailableError(f"{what}: {why}")
    n = torch.cuda.device_count()
    if device != "cuda" and int(device[5:]) >= n:
        raise CudaUnavailableError(f"{what}: {device} was asked for, but {n} CUDA device(s) are visible")


def _keys_and_sizes(tables: Dict):
    """Per table, its unique keys (ascending, uint64) and their buckets' sizes, on the host (one
    copy of each array off a device, not one per table)."""
    ts, off = _to_numpy(tables["table_start"]), _to_numpy(tables["offsets"])
    keys = np.asarray(_to_numpy(tables["keys"])).view(np.uint64)  # a device's int64 bits too
    sizes = np.diff(off)
    return [(keys[ts[j]:ts[j + 1]], sizes[ts[j]:ts[j + 1]]) for j in range(len(ts) - 1)]


def table_occupancy(parts_per_table, n_items: int) -> dict:
    """stats() of tables given per table as (keys, sizes) parts: one part per index, or one per
    shard of a sharded index (a key in several shards is one bucket of their summed sizes)."""
    out = {"n_items": int(n_items), "n_buckets": [], "largest_bucket": [], "mean_bucket_seen_by_item": [],
           "active_bits": []}
    for parts in parts_per_table:
        keys = np.concatenate([k for k, _ in parts])
        sizes = np.concatenate([z for _, z in parts]).astype(np.int64)
        if len(parts) > 1:
            keys, inverse = np.unique(keys, return_inverse=True)
            sizes = np.bincount(inverse.ravel(), weights=sizes, minlength=len(keys)).astype(np.int64)
        out["n_buckets"].append(int(len(keys)))
        out["largest_bucket"].append(int(sizes.max()) if len(sizes) else 0)
        out["mean_bucket_seen_by_item"].append(float((sizes.astype(np.float64) ** 2).sum() / max(sizes.sum(), 1)))
        varying = np.bitwise_or.reduce(keys ^ keys[0]) if len(keys) else 0
        out["active_bits"].append(bin(int(varying)).count("1"))
    return out


def bucket_sizes_of_keys(key_sizes, query_keys) -> np.ndarray:
    """(M, b) sizes of the buckets of the query keys (M, b) in tables given as (keys, sizes) per
    table; 0 where a table has no such key."""
    qkeys = np.asarray(query_keys).view(np.uint64)
    out = np.zeros(qkeys.shape, np.int64)
    for j, (keys, sizes) in enumerate(key_sizes):
        if not len(keys):
            continue
        pos = np.minimum(np.searchsorted(keys, qkeys[:, j]), len(keys) - 1)
        hit = keys[pos] == qkeys[:, j]
        out[hit, j] = sizes[pos[hit]]
    return out


def _usable_layers(weight: torch.Tensor) -> bool:
    """Finite layers whose logits cannot overflow float32: |w . LN(x)| <= |w| |LN(x)| <= |w| sqrt(d)
    (a LayerNorm'd row has norm <= sqrt(d)), kept 1e6 below float32's largest value.  Finite but
    larger layers (an extreme weight decay) made every later add() fail, blaming the features."""
    if not bool(torch.isfinite(weight).all()):
        return False
    largest = float(weight.detach().double().norm(dim=1).max()) * math.sqrt(weight.shape[1])
    return largest <= float(np.finfo(np.float32).max) * 1e-6


def _check_feature_space(space) -> None:
    """feature_space_ is saved in the file's JSON header: a dict of JSON values (numpy scalars, NaN
    and other objects would fail or write non-standard JSON), refused before anything is written."""
    if space is None:
        return
    if not isinstance(space, dict):
        raise ConfigError(f"feature_space_: expected a dict or None, got {type(space).__name__}")
    try:
        json.dumps(space, allow_nan=False)
    except (TypeError, ValueError) as exc:
        bad = next((k for k, v in space.items() if not _json_value(v)), None)
        raise ConfigError(f"feature_space_: expected JSON values (str, int, float, bool, None, lists and dicts "
                          f"of them; no NaN/Inf), got {'' if bad is None else f'{bad!r}: '}"
                          f"{exc}") from exc


def _json_value(v) -> bool:
    try:
        json.dumps(v, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


def _to_numpy(v):
    """A tensor on the host as numpy (uint64 through its int64 bits: torch copies few uint64 ops
    across devices); anything else unchanged."""
    if not isinstance(v, torch.Tensor):
        return v
    if v.dtype == torch.uint64:
        return v.view(torch.int64).cpu().numpy().view(np.uint64)
    return v.cpu().numpy()


def _move(v, device: str):
    if v is None or isinstance(v, int):
        return v
    if device == "cpu":
        return _to_numpy(v)
    t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
    return t.to(device)


def _rows_of(tables: Dict, b: int):
    """The per-row keys (b, n) of sorted tables, in their sorted order (aligned with the stored codes
    and ids)."""
    n = int(tables["n_items"])
    ts = _to_numpy(tables["table_start"])
    off = _to_numpy(tables["offsets"])
    keys = _to_numpy(tables["keys"])
    row_keys = np.empty((b, n), dtype=np.uint64)
    for j in range(b):
        u0, u1 = ts[j], ts[j + 1]
        row_keys[j] = np.repeat(keys[u0:u1], np.diff(off[u0:u1 + 1]))
    return row_keys


def _bucket_code_sums(tables: Dict, query_keys):
    """Per (query, table): the bucket size and its float64 code sum (zeros on a miss), from tables
    whose statistics exist.  Numpy tables and keys give numpy; tensors (a GPU shard) give tensors on
    their device.  One searchsorted per table."""
    as_numpy = isinstance(query_keys, np.ndarray)
    u, hit = _find_buckets(tables, _as_tensor(query_keys))
    off, bsum = _as_tensor(tables["offsets"]), _as_tensor(tables["bucket_sum"])
    count = torch.where(hit, off[u + 1] - off[u], 0)
    total = torch.where(hit[..., None], bsum[u], 0.0)
    return (count.numpy(), total.numpy()) if as_numpy else (count, total)


def _as_tensor(a):
    """A host array as a tensor sharing its memory (read only here: a read-only array, such as a
    memory-mapped file's, is viewed without torch's warning); a tensor unchanged."""
    if isinstance(a, torch.Tensor):
        return a
    a = np.ascontiguousarray(a)
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def _find_buckets(tables: Dict, query_keys: torch.Tensor):
    """(u, hit), (M, b) each, on the keys' device: the index of each (query, table)'s bucket in the
    flat arrays of sorted_tables.h and whether it exists (where it does not, u is some bucket of the
    table, or 0 for a table without any).  One searchsorted per table."""
    flip = torch.iinfo(torch.int64).min  # uint64 order == int64 order after flipping the top bit
    keys = _as_tensor(tables["keys"]).view(torch.int64) ^ flip
    qk = query_keys.view(torch.int64) ^ flip
    ts = _to_numpy(tables["table_start"]).tolist()
    m, b = qk.shape
    u = torch.zeros((m, b), dtype=torch.int64, device=qk.device)
    hit = torch.zeros((m, b), dtype=torch.bool, device=qk.device)
    for j in range(b):
        kj = keys[ts[j]:ts[j + 1]]
        if kj.numel() == 0:
            continue
        col = qk[:, j].contiguous()
        pos = torch.searchsorted(kj, col).clamp_(max=kj.numel() - 1)
        hit[:, j] = kj[pos] == col
        u[:, j] = ts[j] + pos
    return u, hit


# search()'s map from an item to its codes, derived from each ids array (kept as the lookup directory is)
_ITEM_ROWS = _engine.DerivedArrays()


def _item_rows(tables: Dict) -> torch.Tensor:
    """(b, n_items) int64 on the tables' device: row of item i in table j's part of the codes."""
    def build():
        t = _as_tensor(tables["ids"])
        n = int(tables["n_items"])
        b = t.numel() // n
        rows = torch.empty((b, n), dtype=torch.int64, device=t.device)
        return rows.scatter_(1, t.view(b, n), torch.arange(b * n, device=t.device).view(b, n))

    return _ITEM_ROWS.get(tables["ids"], build)


def _candidate_rows(size, start, queries, b: int):
    """(position in `queries`, stored row) of every candidate row of those queries, an item once per
    table it shares with the query; None when they have none."""
    s, st = size[queries].reshape(-1), start[queries].reshape(-1)
    pair = torch.nonzero(s).squeeze(1)  # (query, table) pairs whose bucket exists
    if pair.numel() == 0:
        return None
    s, st = s[pair], st[pair]
    first = torch.cumsum(s, 0) - s
    rows = st.repeat_interleave(s) + torch.arange(int(s.sum()), device=s.device) - first.repeat_interleave(s)
    return (pair // b).repeat_interleave(s), rows


def _chunks_by(cost: np.ndarray, budget: float) -> list:
    """Consecutive runs of positions whose summed cost stays within budget (at least one each)."""
    total = np.cumsum(cost, dtype=np.float64)
    out, i0 = [], 0
    while i0 < len(cost):
        base = total[i0 - 1] if i0 else 0.0
        i1 = max(i0 + 1, int(np.searchsorted(total, base + budget, side="right")))
        out.append((i0, i1))
        i0 = i1
    return out


def _nearest_candidates(tables: Dict, codes: torch.Tensor, keys: torch.Tensor, k: int):
    """search()'s work on tensors (host or device): (distances (M, k) float32, ids (M, k) int64).

    Two paths give the same answer.  A query whose candidates are a small part of the items gathers
    each candidate's b*r values (after taking each (query, item) pair once).  A query whose buckets
    hold much of the index (coarse trained tables) takes a float64 GEMM against every item's code,
    masked to its candidates; the GEMM's rounding only chooses a shortlist, every candidate within a
    margin of its k-th distance, and the shortlist is measured exactly like the gathered ones, so
    equal distances (identical rows) stay ties and go to the smaller id on both paths."""
    m, b, r = codes.shape
    dim = b * r
    n_items = int(tables["n_items"])
    u, hit = _find_buckets(tables, keys)
    off, ids, stored = _as_tensor(tables["offsets"]), _as_tensor(tables["ids"]), _as_tensor(tables["codes"])
    item_rows = _item_rows(tables)
    start = off[u]
    size = torch.where(hit, off[u + 1] - start, 0)
    dev = codes.device
    dist_out = torch.full((m, k), math.inf, dtype=torch.float32, device=dev)
    id_out = torch.full((m, k), -1, dtype=torch.int64, device=dev)
    flat_codes = codes.reshape(m, dim)

    def full_codes(items):  # the items' codes in every table, (len, b*r) float32, row-major
        return stored[item_rows[:, items].T].float().reshape(-1, dim).contiguous()

    def keep_nearest(queries, q, item):
        """Writes the k nearest of the (q, item) pairs (q: positions in `queries`, sorted by q then
        item) at their exact distances (float32), ties to the smaller id."""
        # float64: products of float32 differences are exact there, and torch's float32 row sums depend
        # on a row's position in the block (small rows are vectorised across rows), which broke ties
        # between identical items; rounded to float32 once, equal rows give equal distances
        dist = (full_codes(item) - flat_codes[queries[q]]).double().square_().sum(dim=1).sqrt_().float()
        order = torch.argsort(dist, stable=True)
        order = order[torch.argsort(q[order], stable=True)]
        qo = q[order]
        group = torch.bincount(qo, minlength=queries.numel())
        rank = torch.arange(qo.numel(), device=dev) - (torch.cumsum(group, 0) - group)[qo]
        kept = rank < k
        dist_out[queries[qo[kept]], rank[kept]] = dist[order][kept]
        id_out[queries[qo[kept]], rank[kept]] = item[order][kept]

    per_query = size.sum(dim=1).cpu().numpy()  # candidate rows, an item once per table it shares
    dense = per_query * 8 >= n_items
    # the dense path's items in blocks whose codes (float32 on the way, float64) fit in 4 chunks:
    # one block (built once per call) up to about 87k items at b*r = 256, more blocks beyond
    block = max(1, min(n_items, 4 * _CHUNK_BYTES // (dim * 12)))
    blocks = [(lo, min(n_items, lo + block)) for lo in range(0, n_items, block)]
    cached = {}

    def block_codes(lo, hi):  # (float64 codes, squared norms) of items lo..hi
        if (lo, hi) in cached:
            return cached[(lo, hi)]
        f = full_codes(torch.arange(lo, hi, device=dev)).double()
        out = (f, f.square().sum(dim=1))
        if len(blocks) == 1:
            cached[(lo, hi)] = out
        return out

    bucket_of = None
    for where, on in ((np.flatnonzero(~dense), False), (np.flatnonzero(dense), True)):
        if not where.size:
            continue
        if on and bucket_of is None:
            # each item's bucket in each table (b, N): a query's candidates are the items sharing one
            bucket_of = torch.searchsorted(off, item_rows, right=True) - 1
        # gathered: a bounded number of candidate rows per chunk; dense: a bounded block of
        # queries x items (float64 distances, the candidate mask and the shortlist)
        cost = np.full(where.size, block * 12.0) if on else per_query[where].astype(np.float64) * (4 * dim + 64)
        for i0, i1 in _chunks_by(cost, _CHUNK_BYTES):
            queries = torch.from_numpy(where[i0:i1]).to(dev)
            if not on:
                found = _candidate_rows(size, start, queries, b)
                if found is not None:
                    q, rows = found
                    pair = torch.unique(q * n_items + ids[rows])  # each (query, item) once, sorted
                    keep_nearest(queries, pair // n_items, pair % n_items)
                continue
            fq = flat_codes[queries].double()
            qn = fq.square().sum(dim=1)

            def block_distances(lo, hi):  # squared distances to items lo..hi, inf off the candidates
                mask = torch.zeros((queries.numel(), hi - lo), dtype=torch.bool, device=dev)
                for j in range(b):  # no per-row pairs: the dense queries' buckets hold much of the index
                    mask |= (bucket_of[j, lo:hi][None, :] == u[queries, j][:, None]) & hit[queries, j][:, None]
                f, norms = block_codes(lo, hi)
                sq = (qn[:, None] + norms[None, :] - 2.0 * fq @ f.T).clamp_(min=0).masked_fill_(~mask, math.inf)
                # float64 rounding of the expansion is ~1e-16 x the norms per term: a margin far above it
                return sq, mask, 1e-9 * (qn + norms.max()) + 1e-12

            # the k-th smallest over every block (one block: no second GEMM below)
            best, first = None, None
            for lo, hi in blocks:
                sq, mask, margin = block_distances(lo, hi)
                first = (sq, mask, margin) if len(blocks) == 1 else None
                part = torch.topk(sq, min(k, hi - lo), dim=1, largest=False).values
                best = part if best is None else torch.topk(torch.cat([best, part], 1), min(k, best.shape[1] +
                                                                                          part.shape[1]),
                                                            dim=1, largest=False).values
            kth = best[:, -1] if best.shape[1] >= k else torch.full_like(qn, math.inf)
            # the shortlist: every candidate within the margin of the k-th, measured exactly
            qs, items = [], []
            for lo, hi in blocks:
                sq, mask, margin = first if first is not None else block_distances(lo, hi)
                q, item = torch.nonzero((sq <= (kth + margin)[:, None]) & mask, as_tuple=True)
                qs.append(q)
                items.append(item + lo)
            q, item = torch.cat(qs), torch.cat(items)
            pair = torch.unique(q * n_items + item)  # sorted by query, then item
            keep_nearest(queries, pair // n_items, pair % n_items)
    return dist_out, id_out


def _concat_rows(old: Dict, keys, codes, ids):
    """GPU tables' rows followed by a batch's (tensors), for a device build of all of them."""
    b = keys.shape[0]
    n_old = int(old["n_items"])
    r = codes.shape[2]
    dev = codes.device
    return (torch.cat([torch.from_numpy(_rows_of(old, b)).to(dev), keys], dim=1),
            torch.cat([old["codes"].view(b, n_old, r), codes], dim=1),
            torch.cat([old["ids"].view(b, n_old), ids], dim=1))


def _require_codes(index, caller: str) -> None:
    """IndexStateError for a statistics-only index (store_codes=False), which has no per-item codes."""
    if not index.store_codes:
        why = {"remove_ids": "a removed item's code cannot be taken out of its bucket's sums",
               "search": "there are no per-item codes to rank"}[caller]
        raise IndexStateError(f"{caller}: this index keeps bucket statistics only (store_codes=False), so {why}; "
                              f"build it with store_codes=True")


def _removal_mask(ids, n: int) -> np.ndarray:
    """remove_ids()'s argument as a boolean mask of the n items (True = remove), checked."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    try:
        a = np.asarray(list(ids) if isinstance(ids, (range, set, frozenset)) else ids)
    except (TypeError, ValueError) as exc:
        raise InvalidDTypeError(f"remove_ids: expected integer item ids or a boolean mask, got "
                                f"{type(ids).__name__} ({exc})") from exc
    if a.ndim > 1:
        raise InvalidInputError(f"remove_ids: expected a 1-D array of item ids or a boolean mask, got shape {a.shape}")
    a = a.reshape(-1)
    if a.dtype == np.bool_:
        if a.shape[0] != n:
            raise InvalidInputError(f"remove_ids: a boolean mask needs one value per item ({n}), got {a.shape[0]}")
        return a.copy()
    if a.size == 0:  # an empty list reads as float64
        return np.zeros(n, dtype=bool)
    if a.dtype.kind not in "iu":
        raise InvalidDTypeError(f"remove_ids: expected integer item ids or a boolean mask, got dtype {a.dtype}")
    if n == 0:
        raise NotFittedError(f"remove_ids: the index holds no items (nothing added), got {a.size} id(s) to remove")
    lo, hi = a.min(), a.max()
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise InvalidInputError(f"remove_ids: expected item ids in 0..{n - 1} (the index holds {n} items), got {bad}")
    mask = np.zeros(n, dtype=bool)
    mask[a] = True
    return mask


def _merge_statistics(old: Dict, new: Dict) -> Dict:
    """Union of two statistics-only tables: counts, sums and squared norms add per key.  Computed on
    the host; the result is placed like `old` (the index merged into), wherever `new` lives."""
    if isinstance(old["keys"], torch.Tensor) or isinstance(new["keys"], torch.Tensor):
        merged = _merge_statistics({k: _to_numpy(v) for k, v in old.items()},
                                   {k: _to_numpy(v) for k, v in new.items()})
        if not isinstance(old["keys"], torch.Tensor):
            return merged
        device = old["keys"].device
        return {k: (torch.from_numpy(v).to(device) if isinstance(v, np.ndarray) else v) for k, v in merged.items()}
    b = len(new["table_start"]) - 1
    out_keys, out_counts, out_sum, out_sq, starts = [], [], [], [], [0]
    for j in range(b):
        parts = []
        for t in (old, new):
            u0, u1 = t["table_start"][j], t["table_start"][j + 1]
            parts.append((t["keys"][u0:u1], np.diff(t["offsets"][u0:u1 + 1]), t["bucket_sum"][u0:u1],
                          t["bucket_sqnorm"][u0:u1]))
        k = np.concatenate([p[0] for p in parts])
        uniq, inv = np.unique(k, return_inverse=True)
        cnt = np.zeros(len(uniq), np.int64)
        sm = np.zeros((len(uniq), old["bucket_sum"].shape[1]), np.float64)
        sq = np.zeros(len(uniq), np.float64)
        np.add.at(cnt, inv, np.concatenate([p[1] for p in parts]))
        np.add.at(sm, inv, np.concatenate([p[2] for p in parts]))
        np.add.at(sq, inv, np.concatenate([p[3] for p in parts]))
        out_keys.append(uniq)
        out_counts.append(cnt)
        out_sum.append(sm)
        out_sq.append(sq)
        starts.append(starts[-1] + len(uniq))
    n_total = int(old["n_items"]) + int(new["n_items"])
    counts = np.concatenate(out_counts)
    # offsets keep the row arithmetic of the layout (table j's rows are j*N..(j+1)*N)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return {"keys": np.concatenate(out_keys).astype(np.uint64), "table_start": np.asarray(starts, np.int64),
            "offsets": offsets, "ids": None, "codes": None, "bucket_sum": np.concatenate(out_sum),
            "bucket_sqnorm": np.concatenate(out_sq), "n_items": n_total}


_STATISTICS = ("bucket_sum", "bucket_sqnorm")
# arrays save() may store in a narrower dtype (format 2): name -> (stored, in memory)
_NARROW = {"ids": ("int32", "int64"), "offsets": ("int32", "int64"), "table_start": ("int32", "int64"),
           "keys": ("uint32", "uint64")}


def _narrow(name: str, a: np.ndarray, n_bits: int) -> np.ndarray:
    """The array as save() stores it: ids, offsets and table starts in int32 while they fit, keys in
    uint32 up to 32 bits.  For the paper's r = 32 this halves the 8 ids per item (64 -> 32 bytes)."""
    if name not in _NARROW or a.dtype.name != _NARROW[name][1]:
        return a
    if name == "keys":
        return a.astype(np.uint32) if n_bits <= 32 else a
    fits = a.size == 0 or (int(a.min()) >= 0 and int(a.max()) < 2 ** 31)
    return a.astype(np.int32) if fits else a


def _widen(arrays: Dict[str, np.ndarray], narrowed: dict, path: str) -> None:
    """Undoes _narrow on loaded arrays (in place); anything else in `narrowed` is a damaged file."""
    if not isinstance(narrowed, dict):
        raise IndexFormatError(f"{path}: inconsistent index file (narrowed: expected a mapping, got {narrowed!r})")
    for name, dtype in narrowed.items():
        stored, wide = _NARROW.get(str(name)[2:], (None, None))
        a = arrays.get(name)
        if not str(name).startswith("t_") or stored is None or dtype != wide or a is None or a.dtype.name != stored:
            raise IndexFormatError(f"{path}: inconsistent index file (array {name!r} marked narrowed from "
                                   f"{dtype!r}, stored as {None if a is None else a.dtype.name})")
        arrays[name] = a.astype(wide)


def _copy_all_but_codes(tables: Dict, path: str) -> None:
    """load(mmap=True): the table arrays other than the codes that are still views of the map, copied
    into memory (in place).  They are small beside the codes, and some reach torch.from_numpy on the
    CPU (keys, offsets, bucket sums: "light" partial scores), which warns about read-only arrays.
    Codes that read_container had to copy (not aligned in an older file) are reported."""
    for k, v in tables.items():
        if k != "codes" and isinstance(v, np.ndarray) and not v.flags.writeable:
            tables[k] = v.copy()
    codes = tables.get("codes")
    if codes is not None and codes.flags.writeable:
        warnings.warn(f"{path}: the stored codes are not aligned for {codes.dtype} in this file (written before "
                      f"llsh_index aligned them), so load(mmap=True) copied them into memory; save the index "
                      f"again to map them", UserWarning, stacklevel=3)


def _check_tables(t: Dict, index: LearnableLSHIndex, path: str) -> None:
    """Structural checks of loaded tables, so a crafted file cannot make the engine read out of bounds."""
    b, r, n = index.n_tables, index.n_bits, int(t["n_items"])
    try:
        keys, ts, off = t["keys"], t["table_start"], t["offsets"]
        U = keys.shape[0]
        ok = (keys.ndim == 1 and keys.dtype == np.uint64 and ts.dtype == np.int64 and off.dtype == np.int64 and ts.shape == (b + 1,)
              and ts[0] == 0 and ts[-1] == U and np.all(np.diff(ts) >= 0) and off.shape == (U + 1,)
              and off[0] == 0 and off[-1] == b * n and np.all(np.diff(off) > 0) and n >= 1)
        if t["bucket_sum"] is None or t["bucket_sqnorm"] is None:
            # format 2 leaves them out when the codes are stored (they are derived from them)
            ok &= t["bucket_sum"] is None and t["bucket_sqnorm"] is None and t["codes"] is not None
        else:
            ok &= (t["bucket_sum"].shape == (U, r) and t["bucket_sum"].dtype == np.float64
                   and t["bucket_sqnorm"].shape == (U,) and t["bucket_sqnorm"].dtype == np.float64)
        if ok:
            for j in range(b):  # strictly ascending keys per table, each table exactly N rows
                k = keys[ts[j]:ts[j + 1]]
                ok &= bool(np.all(k[1:] > k[:-1])) and off[ts[j + 1]] - off[ts[j]] == n
                if r < 64:
                    ok &= bool(np.all(k < (np.uint64(1) << np.uint64(r))))
        # the settings say what is stored: codes (store_codes) of code_dtype, or the statistics alone
        ok &= (t["codes"] is not None) == bool(index.store_codes)
        if ok and t["codes"] is not None:
            ok = t["codes"].shape == (b * n, r) and t["codes"].dtype == np.dtype(index.code_dtype)
        if ok and t["ids"] is not None:  # each table holds every item once
            ids = t["ids"]
            ok = (ids.shape == (b * n,) and ids.dtype == np.int64 and (not n or (ids.min() >= 0 and ids.max() < n))
                  and all(bool((np.bincount(ids[j * n:(j + 1) * n], minlength=n) == 1).all()) for j in range(b)))
            if ok:  # and in (key, id) order: ascending within each bucket (add() / merge() merge these runs)
                first = np.zeros(b * n, dtype=bool)
                first[off[:-1]] = True
                ok = bool(np.all((ids[1:] > ids[:-1]) | first[1:]))
    except (KeyError, AttributeError, IndexError) as exc:
        raise IndexFormatError(f"{path}: inconsistent tables ({exc})") from exc
    if not ok:
        raise IndexFormatError(f"{path}: inconsistent tables (sizes, order or dtypes do not match the settings)")
    # Values no index can have written (a file whose checksums were recomputed over edited arrays):
    # sigmoid codes lie in [0, 1] and bucket sums of them are finite and >= 0.  min / max are one
    # pass each without temporaries, and NaN fails both comparisons.
    for name, top in (("codes", 1.0), ("bucket_sum", math.inf), ("bucket_sqnorm", math.inf)):
        a = t[name]
        if a is None or not a.size:
            continue
        lo, hi = a.min(), a.max()
        if not (lo >= 0 and hi <= top and np.isfinite(hi)):
            raise IndexFormatError(f"{path}: stored {name} hold values no index writes (NaN, Inf or outside "
                                   f"[0, {top:g}]: min {lo}, max {hi})")
    # a bucket's sums of codes in [0, 1] are at most its size (squared norms: size * r); beyond, a
    # light score would exceed the miss value and rank a hit above a miss
    if t["bucket_sum"] is not None and keys.size:
        size = np.diff(off).astype(np.float64)
        if (t["bucket_sum"].max(axis=1) > size).any() or (t["bucket_sqnorm"] > size * r).any():
            raise IndexFormatError(f"{path}: stored bucket statistics exceed their buckets' sizes (sums of codes "
                                   f"in [0, 1])")
    # every stored code lies in the bucket of its own key (codes of another bucket would be scored
    # there).  A code of exactly 0.5 takes either bit: float16 rounds codes just below 0.5 up to it.
    if t["codes"] is not None and keys.size:
        # bit i of a key is bit i % 8 of its little-endian byte i // 8, as packbits(bitorder="little") packs
        owner = np.repeat(keys.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :(r + 7) // 8], np.diff(off), axis=0)
        step = max(1, (1 << 22) // max(1, r))
        for i in range(0, owner.shape[0], step):
            c = t["codes"][i:i + step]
            bits = np.packbits(c >= 0.5, axis=1, bitorder="little")
            either = np.packbits(c == 0.5, axis=1, bitorder="little")
            if ((bits ^ owner[i:i + step]) & ~either).any():
                raise IndexFormatError(f"{path}: stored codes do not match the keys of their buckets")
    # statistics stored beside the codes (format 1) must be the codes' own: "light" / "squared" read
    # them, "mean" the codes, so edited ones scored wrong in two modes only.  Derived again (what
    # format 2 does lazily, bit for bit the build's values) and kept in place of the stored ones.
    if t["codes"] is not None and t["bucket_sum"] is not None:
        derived = _engine.ensure_statistics({"codes": t["codes"], "offsets": off, "bucket_sum": None},
                                            index.n_threads)
        for name in _STATISTICS:
            if not np.allclose(t[name], derived[name], rtol=1e-9, atol=1e-9):
                worst = float(np.abs(t[name] - derived[name]).max())
                raise IndexFormatError(f"{path}: stored {name} does not match the stored codes (off by up to "
                                       f"{worst:.3g}); expected the codes' per-bucket sums")
            t[name] = derived[name]
