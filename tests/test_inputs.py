"""The catalogue of bad inputs: each gets a typed error naming what was expected and what came.

One parametrised table, so a new case is one line.  An entry with a fifth field is a known bug: it
runs as xfail(strict=True), so the day the bug is fixed the test says so and the field is dropped.
Inputs that must be ACCEPTED (other layouts, dtypes and containers of the same values) are in a
second table, test_accepted_inputs_score_like_contiguous_float32, and must give bit-identical
tables and scores.
"""
import re

import numpy as np
import pytest
import torch

import llsh_index
import llsh_index.probing
from llsh_index import (ConfigError, CudaUnavailableError, DeviceMismatchError, IndexFormatError, IndexStateError,
                        InvalidDTypeError, InvalidInputError, LearnableLSHIndex, NotFittedError)

D = 16
_rng = np.random.default_rng(0)
X = _rng.standard_normal((200, D)).astype(np.float32)


def fitted():
    return LearnableLSHIndex(n_tables=2, n_bits=8).add(X)


def with_nan():
    x = X.copy()
    x[17, 3] = np.nan
    return x


def with_inf():
    x = X[:30].copy()
    x[5, 0] = -np.inf
    return x


def put(x, row, col, value, dtype=None):
    x = np.array(x, dtype=dtype or x.dtype)
    x[row, col] = value
    return x


VIDS = np.repeat(np.arange(20), 10)  # 20 videos of 10 snippets: a valid video_ids for X


def quick_fit(index, x=X, **kw):
    """fit() with the smallest real training run (one step, temporal positives, no faiss)."""
    kw = {"video_ids": VIDS, "iterations": 1, "batch_size": 16, "queue_size": 32, "progress": False, **kw}
    return index.fit(x, **kw)


def float16_overflow():
    with np.errstate(over="ignore"):
        return (X[:40] * np.float32(1e5)).astype(np.float16)  # |x| > 65504 overflows to +-inf


CATALOGUE = [
    # (id, action, error type, words the message must contain)
    ("nan-in-add", lambda: LearnableLSHIndex(n_tables=2, n_bits=8).add(with_nan()), InvalidInputError,
     ["finite", "row 17"]),
    ("inf-in-score", lambda: fitted().score(with_inf()), InvalidInputError, ["finite", "row 5"]),
    ("nan-in-fit", lambda: LearnableLSHIndex(n_tables=2, n_bits=8).fit(with_nan(), progress=False),
     InvalidInputError, ["finite", "row 17"]),
    ("1-d", lambda: fitted().score(X[0]), InvalidInputError, ["2-D", f"({D},)"]),
    ("3-d", lambda: fitted().score(X[None]), InvalidInputError, ["2-D", f"(1, 200, {D})"]),
    ("wrong-dim", lambda: fitted().score(X[:, :5]), InvalidInputError, [f"dimension {D}", "(200, 5)"]),
    ("wrong-dim-add", lambda: fitted().add(np.zeros((3, D + 1), np.float32)), InvalidInputError,
     [f"dimension {D}"]),
    ("empty-batch", lambda: fitted().score(np.zeros((0, D), np.float32)), InvalidInputError,
     ["at least one row", "(0, 16)"]),
    ("int-dtype", lambda: fitted().score(X.astype(np.int64)), InvalidDTypeError, ["float", "int64"]),
    ("bool-dtype", lambda: fitted().score(X > 0), InvalidDTypeError, ["float", "bool"]),
    ("complex-dtype", lambda: fitted().score(X.astype(np.complex64)), InvalidDTypeError, ["complex64"]),
    ("string-array", lambda: fitted().score(np.array([["a"] * D])), InvalidDTypeError, ["float"]),
    ("ragged-list", lambda: fitted().score([[1.0, 2.0], [3.0]]), InvalidInputError, ["2-D"]),
    ("torch-int", lambda: fitted().score(torch.ones(3, D, dtype=torch.int32)), InvalidDTypeError, ["int32"]),
    ("requires-grad", lambda: fitted().score(torch.ones(3, D, requires_grad=True)), InvalidInputError,
     ["requires_grad", "detach"]),
    ("other-device", lambda: fitted().score(torch.empty(3, D, device="meta")), DeviceMismatchError,
     ["cpu", "meta"]),
    ("score-before-add", lambda: LearnableLSHIndex(D).score(X), NotFittedError, ["empty", "add"]),
    ("score-untouched", lambda: LearnableLSHIndex().score(X), NotFittedError, ["add"]),
    ("save-unfitted", lambda: LearnableLSHIndex().save("/tmp/never-written.llsh"), NotFittedError, ["fit"]),
    # they made random layers for the probe's dimension, so a later add() of the real data was refused
    ("encode-before-layers", lambda: LearnableLSHIndex().encode(X[:, :8]), NotFittedError, ["encode", "no hash layers"]),
    ("hash-keys-before-layers", lambda: LearnableLSHIndex().hash_keys(X), NotFittedError, ["hash_keys", "dim="]),
    ("n-bits-0", lambda: LearnableLSHIndex(n_bits=0), ConfigError, ["n_bits", "1..64", "0"]),
    ("n-bits-65", lambda: LearnableLSHIndex(n_bits=65), ConfigError, ["n_bits", "1..64", "65"]),
    ("n-bits-float", lambda: LearnableLSHIndex(n_bits=8.0), ConfigError, ["n_bits", "integer"]),
    ("n-tables-0", lambda: LearnableLSHIndex(n_tables=0), ConfigError, ["n_tables", "1..65536", "0"]),
    ("bad-mode", lambda: LearnableLSHIndex(mode="median"), ConfigError, ["mode", "median"]),
    ("bad-score-mode", lambda: fitted().score(X, mode="max"), ConfigError, ["mode", "max"]),
    ("mean-needs-codes", lambda: LearnableLSHIndex(n_tables=2, n_bits=8, mode="light", store_codes=False)
     .add(X).score(X, mode="mean"), ConfigError, ["mean", "store_codes"]),
    ("bad-code-dtype", lambda: LearnableLSHIndex(code_dtype="int8"), ConfigError, ["float16", "int8"]),
    ("nan-miss-value", lambda: LearnableLSHIndex(miss_value=float("nan")), ConfigError, ["miss_value"]),
    ("bad-device", lambda: LearnableLSHIndex(device="gpu"), ConfigError, ["cuda", "gpu"]),
    ("video-ids-length", lambda: LearnableLSHIndex(n_tables=2, n_bits=8).fit(X, video_ids=np.zeros(150)),
     InvalidInputError, ["200", "(150,)"]),
    ("single-snippet-video", lambda: LearnableLSHIndex(n_tables=2, n_bits=8).fit(
        X, video_ids=np.r_[np.zeros(199), 1], progress=False), InvalidInputError, ["at least 2", "1"]),
    ("fit-after-add", lambda: fitted().fit(X, progress=False), IndexStateError, ["reset", "200"]),
    ("zero-iterations", lambda: LearnableLSHIndex().fit(X, iterations=0), ConfigError, ["iterations"]),
    ("not-an-index-file", lambda: LearnableLSHIndex.load(__file__), IndexFormatError, ["not an llsh_index"]),
    # --- non-finite values: every entry point, every container, the row number is absolute
    ("nan-in-score-float64", lambda: fitted().score(put(X[:50], 44, 0, np.nan, np.float64)), InvalidInputError,
     ["finite", "row 44"]),
    ("inf-in-add", lambda: LearnableLSHIndex(n_tables=2, n_bits=8).add(put(X, 3, 1, np.inf)), InvalidInputError,
     ["finite", "row 3"]),
    ("nan-in-later-chunk", lambda: LearnableLSHIndex(n_tables=2, n_bits=8, batch_size=32).add(put(X, 150, 2, np.nan)),
     InvalidInputError, ["finite", "row 150"]),
    ("nan-in-score-later-chunk", lambda: LearnableLSHIndex(n_tables=2, n_bits=8, batch_size=16).add(X).score(
        put(X, 99, 0, np.nan)), InvalidInputError, ["finite", "row 99"]),
    ("nan-in-torch", lambda: fitted().score(torch.from_numpy(put(X[:20], 7, 7, np.nan))), InvalidInputError,
     ["finite", "row 7"]),
    ("inf-in-fit", lambda: LearnableLSHIndex(n_tables=2, n_bits=8).fit(put(X, 0, 0, -np.inf), progress=False),
     InvalidInputError, ["finite", "row 0"]),
    ("nan-in-encode", lambda: fitted().encode(with_nan()), InvalidInputError, ["finite", "row 17"]),
    ("nan-in-hash-keys", lambda: fitted().hash_keys(with_nan()), InvalidInputError, ["finite", "row 17"]),
    ("float16-overflow-inf", lambda: fitted().score(float16_overflow()), InvalidInputError, ["finite", "row"]),
    ("float64-beyond-float32", lambda: fitted().score(put(X[:10], 6, 2, 1e300, np.float64)), InvalidInputError,
     ["finite", "row 6"]),
    # finite float32 values near float32 max overflow LayerNorm's variance: rejected, never a silent score
    ("float32-huge-finite", lambda: fitted().score(put(X[:10], 3, slice(None), 3e38)), InvalidInputError,
     ["row 3"]),
    # --- shapes and sizes
    ("1-d-add", lambda: LearnableLSHIndex().add(X[0]), InvalidInputError, ["2-D", f"({D},)"]),
    ("0-d", lambda: fitted().score(np.float32(1.0)), InvalidInputError, ["2-D", "()"]),
    ("3-d-torch", lambda: fitted().score(torch.zeros(2, 3, D)), InvalidInputError, ["2-D", f"(2, 3, {D})"]),
    ("zero-columns", lambda: LearnableLSHIndex().add(np.zeros((5, 0), np.float32)), InvalidInputError,
     ["dimension", "(5, 0)"]),
    ("empty-add", lambda: fitted().add(np.zeros((0, D), np.float32)), InvalidInputError, ["at least one row"]),
    ("empty-first-add", lambda: LearnableLSHIndex().add(np.zeros((0, D), np.float32)), InvalidInputError,
     ["at least one row"]),
    ("empty-fit", lambda: LearnableLSHIndex().fit(np.zeros((0, D), np.float32)), InvalidInputError,
     ["at least one row"]),
    ("wrong-dim-torch", lambda: fitted().score(torch.zeros(4, D - 1)), InvalidInputError,
     [f"dimension {D}", f"(4, {D - 1})"]),
    ("dim-fit-then-add", lambda: quick_fit(LearnableLSHIndex(n_tables=2, n_bits=8)).add(
        np.zeros((3, D + 1), np.float32)), InvalidInputError, [f"dimension {D}", f"(3, {D + 1})"]),
    ("dim-ctor-then-add", lambda: LearnableLSHIndex(8, n_tables=2, n_bits=8).add(X), InvalidInputError,
     ["dimension 8", f"(200, {D})"]),
    ("dim-ctor-then-fit", lambda: LearnableLSHIndex(8).fit(X), InvalidInputError, ["dimension 8"]),
    # --- dtypes and containers
    ("uint8-dtype", lambda: fitted().score(X.astype(np.uint8)), InvalidDTypeError, ["float", "uint8"]),
    ("longdouble-dtype", lambda: fitted().score(X.astype(np.longdouble)), InvalidDTypeError, ["float"]),
    ("object-dtype", lambda: fitted().score(X.astype(object)), InvalidDTypeError, ["object"]),
    ("none-input", lambda: fitted().score(None), InvalidDTypeError, ["float"]),
    ("int-list", lambda: fitted().score([[1] * D]), InvalidDTypeError, ["int64"]),
    ("int-dtype-add", lambda: LearnableLSHIndex().add(X.astype(np.int32)), InvalidDTypeError, ["int32"]),
    ("complex-dtype-fit", lambda: LearnableLSHIndex().fit(X.astype(np.complex128)), InvalidDTypeError,
     ["complex128"]),
    ("torch-bool", lambda: fitted().score(torch.ones(3, D, dtype=torch.bool)), InvalidDTypeError, ["bool"]),
    ("torch-complex", lambda: fitted().score(torch.ones(3, D, dtype=torch.complex64)), InvalidDTypeError,
     ["complex64"]),
    ("requires-grad-add", lambda: LearnableLSHIndex().add(torch.ones(3, D, requires_grad=True)), InvalidInputError,
     ["requires_grad"]),
    ("requires-grad-fit", lambda: LearnableLSHIndex().fit(torch.ones(3, D, requires_grad=True)),
     InvalidInputError, ["requires_grad"]),
    ("requires-grad-non-leaf", lambda: fitted().score(torch.ones(3, D, requires_grad=True) * 2),
     InvalidInputError, ["requires_grad"]),
    ("other-device-add", lambda: LearnableLSHIndex().add(torch.empty(3, D, device="meta")), DeviceMismatchError,
     ["meta"]),
    # --- state: calls in the wrong order
    ("bucket-sizes-before-add", lambda: LearnableLSHIndex(D).bucket_sizes(), NotFittedError, ["add"]),
    ("stats-before-add", lambda: LearnableLSHIndex(D).stats(), NotFittedError, ["add"]),
    ("query-bucket-sizes-before-add", lambda: LearnableLSHIndex(D).query_bucket_sizes(X), NotFittedError, ["add"]),
    ("query-bucket-sizes-wrong-dim", lambda: fitted().query_bucket_sizes(X[:, :5]), InvalidInputError,
     ["queries", f"dimension {D}", "(200, 5)"]),
    ("score-after-reset", lambda: _reset(fitted()).score(X), NotFittedError, ["add"]),
    ("fit-after-load-with-items", lambda: _reload(fitted()).fit(X, progress=False), IndexStateError, ["reset"]),
    ("table-out-of-range", lambda: fitted().bucket_sizes(2), ConfigError, ["table", "0..1", "2"]),
    # --- settings
    ("n-bits-negative", lambda: LearnableLSHIndex(n_bits=-1), ConfigError, ["n_bits", "-1"]),
    ("n-bits-bool", lambda: LearnableLSHIndex(n_bits=True), ConfigError, ["n_bits", "integer"]),
    ("n-bits-none", lambda: LearnableLSHIndex(n_bits=None), ConfigError, ["n_bits", "integer"]),
    ("n-tables-negative", lambda: LearnableLSHIndex(n_tables=-3), ConfigError, ["n_tables", "-3"]),
    ("n-tables-float", lambda: LearnableLSHIndex(n_tables=2.5), ConfigError, ["n_tables", "integer"]),
    ("dim-0", lambda: LearnableLSHIndex(0), ConfigError, ["dim", ">= 2"]),
    ("batch-size-0", lambda: LearnableLSHIndex(batch_size=0), ConfigError, ["batch_size"]),
    ("n-threads-negative", lambda: LearnableLSHIndex(n_threads=-1), ConfigError, ["n_threads"]),
    ("inf-miss-value", lambda: LearnableLSHIndex(miss_value=float("inf")), ConfigError, ["miss_value", "inf"]),
    ("str-miss-value", lambda: LearnableLSHIndex(miss_value="1"), ConfigError, ["miss_value"]),
    ("mean-without-codes", lambda: LearnableLSHIndex(store_codes=False), ConfigError, ["store_codes"]),
    ("bad-device-to", lambda: fitted().to("tpu"), ConfigError, ["tpu"]),
    ("bad-table-distances-mode", lambda: fitted().table_distances(X, mode="MEAN"), ConfigError, ["MEAN"]),
    # --- training arguments
    ("video-ids-2d", lambda: LearnableLSHIndex().fit(X, video_ids=np.zeros((200, 1))), InvalidInputError,
     ["200", "(200, 1)"]),
    ("video-ids-too-long", lambda: LearnableLSHIndex().fit(X, video_ids=np.zeros(201)), InvalidInputError,
     ["(201,)"]),
    # np.asarray wraps a generator (or a set) whole: its shape () named nothing; the type is named now
    ("video-ids-generator", lambda: LearnableLSHIndex().fit(X, video_ids=(i // 10 for i in range(200))),
     InvalidInputError, ["expected a sequence or array of 200 video ids", "got generator"]),
    ("video-ids-set", lambda: LearnableLSHIndex().fit(X, video_ids=set(range(200))), InvalidInputError,
     ["expected a sequence or array of 200 video ids", "got set"]),
    ("every-video-one-snippet", lambda: LearnableLSHIndex().fit(X, video_ids=np.arange(200), progress=False),
     InvalidInputError, ["at least 2 snippets"]),
    ("fit-one-row", lambda: LearnableLSHIndex().fit(X[:1], progress=False), InvalidInputError, ["at least 2 rows"]),
    ("negative-max-offset", lambda: LearnableLSHIndex().fit(X, video_ids=VIDS, max_offset=-1), ConfigError,
     ["max_offset"]),
    ("zero-queue", lambda: LearnableLSHIndex().fit(X, queue_size=0), ConfigError, ["queue_size"]),
    ("zero-temperature", lambda: LearnableLSHIndex().fit(X, video_ids=VIDS, temperature=0.0, progress=False),
     ConfigError, ["temperature"]),
    ("momentum-above-1", lambda: LearnableLSHIndex().fit(X, video_ids=VIDS, momentum=1.5, progress=False),
     ConfigError, ["momentum"]),
    ("lr-string", lambda: LearnableLSHIndex().fit(X, video_ids=VIDS, lr="fast"), ConfigError,
     ["lr: expected a real number", "'fast'"]),
    ("momentum-none-string", lambda: LearnableLSHIndex().fit(X, video_ids=VIDS, momentum="a"), ConfigError,
     ["momentum: expected a real number"]),
    ("grad-clip-complex", lambda: LearnableLSHIndex().fit(X, video_ids=VIDS, grad_clip=1j), ConfigError, ["grad_clip"]),
    ("fit-seed-float", lambda: LearnableLSHIndex().fit(X, video_ids=VIDS, seed=1.5), ConfigError,
     ["seed: expected an integer", "1.5"]),
    # --- once bugs, fixed in index.py
    ("empty-mode-string", lambda: fitted().score(X, mode=""), ConfigError, ["mode"]),
    ("miss-value-beyond-float32", lambda: LearnableLSHIndex(miss_value=1e300), ConfigError, ["miss_value"]),
    # torch's / numpy's allocation errors (RuntimeError, MemoryError) before
    ("queue-too-large", lambda: LearnableLSHIndex().fit(X, video_ids=VIDS, queue_size=2 ** 40), ConfigError,
     ["queue_size: a queue of 1099511627776 x 256 float32", "GiB) cannot be allocated"]),
    ("iterations-too-many", lambda: LearnableLSHIndex().fit(X, video_ids=VIDS, iterations=2 ** 40), ConfigError,
     ["iterations: 1099511627776 per video", "cannot be allocated"]),
    # bool("no") is True: the string trained exactly as project_mean=True
    ("project-mean-string", lambda: LearnableLSHIndex().fit(X, video_ids=VIDS, project_mean="no"), ConfigError,
     ["project_mean: expected True or False", "'no'"]),
    ("centre-layers-string", lambda: LearnableLSHIndex().fit(X, video_ids=VIDS, centre_layers="false"), ConfigError,
     ["centre_layers: expected True or False", "'false'"]),
    # a negative miss value ranked every query that misses one table as the most normal: [-1, -1, -1, -1, 0.44]
    ("negative-miss-value", lambda: LearnableLSHIndex(miss_value=-1.0), ConfigError, ["miss_value", ">= 0", "-1.0"]),
    ("nan-learning-rate", lambda: quick_fit(LearnableLSHIndex(n_tables=2, n_bits=8), lr=float("nan")), ConfigError,
     ["lr"]),
    # LayerNorm of one feature is 0 whatever it is: every score would be equal
    ("dim-1", lambda: LearnableLSHIndex(1), ConfigError, ["dim", ">= 2", "1"]),
    ("one-column-first-add", lambda: LearnableLSHIndex().add(X[:, :1]), InvalidInputError,
     ["at least 2 features", "got 1"]),
    # finite values whose float32 variance overflows: named as such, not as "NaN or Inf"
    ("huge-finite-add", lambda: LearnableLSHIndex(n_tables=2, n_bits=8).add(X * np.float32(1e20)), InvalidInputError,
     ["finite but too large", "rescale"]),
    ("huge-finite-fit", lambda: quick_fit(LearnableLSHIndex(n_tables=2, n_bits=8), X * np.float32(1e20)),
     InvalidInputError, ["finite but too large", "row"]),
    # unbounded sizes reached the allocator (torch RuntimeError / TypeError) or the bindings
    ("n-tables-huge", lambda: LearnableLSHIndex(16, n_tables=10 ** 9), ConfigError, ["n_tables", "1..65536"]),
    ("layers-too-big", lambda: LearnableLSHIndex(10 ** 10, n_tables=4096, n_bits=64), ConfigError,
     ["cannot be allocated", "GiB"]),
    ("n-threads-huge", lambda: LearnableLSHIndex(n_threads=2 ** 31), ConfigError, ["n_threads", "0..65536"]),
    ("seed-huge", lambda: LearnableLSHIndex(16, seed=2 ** 70), ConfigError, ["seed"]),
    ("seed-float", lambda: LearnableLSHIndex(seed=1.5), ConfigError, ["seed", "integer", "1.5"]),
    ("seed-str", lambda: LearnableLSHIndex(seed="a"), ConfigError, ["seed", "integer"]),
    ("mode-list", lambda: LearnableLSHIndex(mode=["mean"]), ConfigError, ["mode", "['mean']"]),
    ("score-mode-list", lambda: fitted().score(X, mode=["mean"]), ConfigError, ["mode", "['mean']"]),
    ("store-codes-str", lambda: LearnableLSHIndex(store_codes="no"), ConfigError, ["store_codes", "'no'"]),
    ("video-ids-nan", lambda: LearnableLSHIndex().fit(X, video_ids=np.r_[np.zeros(100), np.full(100, np.nan)]),
     InvalidInputError, ["video_ids", "finite", "row 100"]),
    ("video-ids-mixed-types", lambda: LearnableLSHIndex().fit(X, video_ids=np.array([1, "a"] * 100, dtype=object)),
     InvalidInputError, ["video_ids", "one sortable type", "int, str"]),
    ("video-ids-none", lambda: LearnableLSHIndex().fit(X, video_ids=[None] * 200), InvalidInputError,
     ["video_ids", "NoneType"]),
    # partial sums from elsewhere (Ray, a file): checked before they combine into NaN or negative scores
    ("combine-empty-part", lambda: fitted().combine_partial_scores([{}]), InvalidInputError,
     ["part 0 lacks", "'mode', 'sum', 'count'"]),
    ("combine-not-a-mapping", lambda: fitted().combine_partial_scores([None]), InvalidInputError,
     ["part 0", "NoneType"]),
    ("combine-one-part-not-a-list", lambda: fitted().combine_partial_scores(_part()), InvalidInputError,
     ["list of partial_scores()", "dict"]),
    ("combine-nan-sum", lambda: fitted().combine_partial_scores([_part(sum=np.nan)]), InvalidInputError,
     ["part 0", "finite float sums", "NaN"]),
    ("combine-negative-count", lambda: fitted().combine_partial_scores([_part(count=-1)]), InvalidInputError,
     ["part 0", "integers >= 0", "-1"]),
    ("combine-float-count", lambda: fitted().combine_partial_scores([_part(count=0.5)]), InvalidInputError,
     ["part 0", "integers >= 0", "float64"]),
    ("combine-1d-parts", lambda: fitted().combine_partial_scores([_part(flat=True)]), InvalidInputError,
     ["part 0", "count (M, b)"]),
    ("sparse-tensor", lambda: fitted().score(torch.from_numpy(X[:5]).to_sparse()), InvalidInputError,
     ["dense", "sparse", "to_dense"]),
    ("combine-bogus-mode", lambda: fitted().combine_partial_scores([{**_part(), "mode": "bogus"}]), ConfigError,
     ["mode", "bogus"]),
    ("combine-3d-sum-in-mean-mode", lambda: fitted().combine_partial_scores(
        [{**_part(), "sum": np.zeros((10, 2, 8))}]), InvalidInputError, ["(M, b) for mode 'mean'", "(10, 2, 8)"]),
    ("combine-light-str-codes", lambda: _light().combine_partial_scores([_light().partial_scores(X[:10], mode="light")],
                                                                        query_codes="x"), InvalidDTypeError,
     ["query_codes", "float codes"]),
    ("partial-codes-out-of-range", lambda: fitted().partial_scores(
        query_codes=np.full((3, 2, 8), 1e30, np.float32), query_keys=np.zeros((3, 2), np.uint64)), InvalidInputError,
     ["query_codes", "[0, 1]"]),
    ("probe-masks-zero", lambda: llsh_index.probing.probe_masks(np.zeros((2, 2, 8), np.float32), 0), ConfigError,
     ["n_probes", ">= 1", "0"]),
    ("sharded-devices-int", lambda: llsh_index.ShardedIndex(fitted(), devices=3), ConfigError, ["devices", "int 3"]),
    ("sharded-load-none", lambda: llsh_index.ShardedIndex.load(None), ConfigError, ["shard file paths", "NoneType"]),
    # an int path was taken as a file descriptor: load() read the caller's fd and closed it
    ("load-int-path", lambda: LearnableLSHIndex.load(0), InvalidInputError, ["path", "file path", "int 0"]),
    ("load-none-path", lambda: LearnableLSHIndex.load(None), InvalidInputError, ["path", "NoneType"]),
    ("merge-all-not-indexes", lambda: LearnableLSHIndex.merge_all([fitted(), 1]), ConfigError,
     ["merge_all", "LearnableLSHIndex", "int"]),
    ("merge-all-none", lambda: LearnableLSHIndex.merge_all(None), ConfigError, ["merge_all", "NoneType"]),
    ("from-shards-not-indexes", lambda: llsh_index.ShardedIndex.from_shards([1]), ConfigError,
     ["from_shards", "LearnableLSHIndex", "int"]),
    ("query-batch-str", lambda: llsh_index.ShardedIndex.from_shards([fitted()]).score(X, query_batch="a"),
     ConfigError, ["query_batch", "integer", "'a'"]),
    ("query-batch-float", lambda: llsh_index.ShardedIndex.from_shards([fitted()]).score(X, query_batch=1.5),
     ConfigError, ["query_batch", "1.5"]),
    ("query-batch-bool", lambda: llsh_index.ShardedIndex.from_shards([fitted()]).score(X, query_batch=True),
     ConfigError, ["query_batch", "bool"]),
]


def _light():
    return LearnableLSHIndex(n_tables=2, n_bits=8, mode="light", store_codes=False).add(X)


def _part(sum=None, count=None, flat=False):
    """partial_scores() of 10 queries with one entry replaced (a shard's answer gone wrong)."""
    p = dict(fitted().partial_scores(X[:10]))
    p["sum"], p["count"] = np.array(p["sum"], dtype=np.float64), np.array(p["count"])
    if sum is not None:
        p["sum"][3, 1] = sum
    if count is not None:
        p["count"] = p["count"].astype(np.asarray(count).dtype)
        p["count"][2, 0] = count
    if flat:
        p["sum"], p["count"] = p["sum"].ravel(), p["count"].ravel()
    return p


def _reset(index):
    index.reset()
    return index


def _reload(index):
    import tempfile, os

    with tempfile.TemporaryDirectory() as d:
        index.save(os.path.join(d, "i.llsh"))
        return LearnableLSHIndex.load(os.path.join(d, "i.llsh"))


def _params():
    out = []
    for c in CATALOGUE:
        marks = [pytest.mark.xfail(strict=True, reason=c[4])] if len(c) > 4 else []
        out.append(pytest.param(*c[1:4], id=c[0], marks=marks))
    return out


def test_catalogue_ids_are_unique():
    ids = [c[0] for c in CATALOGUE]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]


@pytest.mark.parametrize("action,error,words", _params())
def test_bad_input_catalogue(action, error, words):
    with pytest.raises(error) as info:
        action()
    assert isinstance(info.value, llsh_index.LLSHError)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.skipif(llsh_index.cuda_available(), reason="a CUDA device is present")
def test_to_cuda_without_a_gpu_says_why():
    with pytest.raises(CudaUnavailableError) as info:
        fitted().to("cuda")
    assert "CUDA" in str(info.value)


@pytest.mark.skipif(llsh_index.cuda_available(), reason="a CUDA device is present")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_constructing_on_cuda_without_a_gpu_says_why(device):
    # as to("cuda"): a typed error, not torch's AssertionError from moving the hash layers
    with pytest.raises(CudaUnavailableError, match="CUDA"):
        LearnableLSHIndex(8, n_tables=2, n_bits=4, device=device)
    with pytest.raises(CudaUnavailableError, match="CUDA"):
        LearnableLSHIndex(device=device)


def _readonly(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("host", [
    lambda: np.arange(8.0, dtype=np.float32),
    lambda: np.arange(8.0, dtype=np.float32)[::-1],          # torch.from_dlpack aborts the process on these
    lambda: np.arange(16.0, dtype=np.float32).reshape(4, 4)[::-1, ::2],
    lambda: np.arange(8.0).astype(">f4"),                     # from_dlpack: a bare BufferError
    lambda: _readonly(np.arange(8.0, dtype=np.float32)),
    lambda: torch.arange(8.0),
], ids=["plain", "negative-stride", "negative-stride-2d", "big-endian", "read-only", "torch-cpu"])
def test_cuda_engine_rejects_host_arrays_with_a_typed_error(host):
    """Host data handed to the CUDA engine: DeviceMismatchError before any conversion, whatever its layout."""
    from llsh_index import _cuda_engine as ce

    with pytest.raises(DeviceMismatchError, match="x:"):
        ce._as_tensor(host(), "x")


def test_cuda_engine_copies_negatively_strided_device_arrays(monkeypatch):
    """A device array with negative strides (cupy's a[::-1]) is copied C-ordered before DLPack sees it."""
    from llsh_index import _cuda_engine as ce

    class FakeDeviceArray:  # the parts of a cupy array _as_tensor looks at
        def __init__(self, a):
            self.a = a
            self.strides = a.strides

        def __dlpack_device__(self):
            return (2, 0)

        def __dlpack__(self, **kw):
            return self.a.__dlpack__(**kw)

        def copy(self):
            return FakeDeviceArray(self.a.copy())

    seen = []
    monkeypatch.setattr(torch, "from_dlpack", lambda x: seen.append(x.strides) or torch.from_numpy(x.a))
    with pytest.raises(DeviceMismatchError):  # the stand-in's tensor is on the CPU
        ce._as_tensor(FakeDeviceArray(np.arange(8.0, dtype=np.float32)[::-1]), "x")
    assert seen == [(4,)]


class _CAIOnly:
    """A device array known only through __cuda_array_interface__ (a Numba device array, say)."""

    def __init__(self, stream="absent"):
        self.__cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f4", "data": (0, False), "version": 3}
        if stream != "absent":
            self.__cuda_array_interface__["stream"] = stream


@pytest.mark.parametrize("stream, waits", [("absent", None), (None, None), (7, 7), (1, 1)])
def test_cuda_array_interface_stream_is_waited_for(monkeypatch, stream, waits):
    """CUDA Array Interface v3: torch's stream waits for the producer's stream before the data is used."""
    from llsh_index import _cuda_engine as ce

    class FakeCudaTensor:
        is_cuda, device = True, torch.device("cuda", 0)

    calls = []

    class FakeStream:
        def wait_stream(self, other):
            calls.append(("wait", other))

    monkeypatch.setattr(torch, "from_dlpack", lambda x: (_ for _ in ()).throw(TypeError("no DLPack")))
    monkeypatch.setattr(torch, "as_tensor", lambda x: FakeCudaTensor())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: calls.append(("current", device)) or FakeStream())
    monkeypatch.setattr(torch.cuda, "ExternalStream", lambda ptr, device: ("external", ptr, device))
    t = ce._as_tensor(_CAIOnly(stream), "x")
    assert isinstance(t, FakeCudaTensor)
    cuda0 = torch.device("cuda", 0)
    assert calls == ([] if waits is None else [("current", cuda0), ("wait", ("external", waits, cuda0))])


@pytest.mark.parametrize("stream", [0, -1, 2.5, True, "7"])
def test_cuda_array_interface_bad_stream_is_a_typed_error(monkeypatch, stream):
    from llsh_index import _cuda_engine as ce

    class FakeCudaTensor:
        is_cuda, device = True, torch.device("cuda", 0)

    monkeypatch.setattr(torch, "from_dlpack", lambda x: (_ for _ in ()).throw(TypeError("no DLPack")))
    monkeypatch.setattr(torch, "as_tensor", lambda x: FakeCudaTensor())
    with pytest.raises(InvalidInputError, match=r"'stream' to be None or a positive integer.*got " + re.escape(repr(stream))):
        ce._as_tensor(_CAIOnly(stream), "x")


def test_errors_are_also_builtin_types():
    assert issubclass(InvalidInputError, ValueError) and issubclass(InvalidDTypeError, TypeError)
    assert issubclass(NotFittedError, RuntimeError) and issubclass(IndexFormatError, ValueError)


# ---------------------------------------------------------------------- inputs that must be accepted
def _memmap_readonly(x, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, x)
    return np.load(path, mmap_mode="r")


# (id, variant of x, the float32 C-contiguous array holding the values the index must see)
ACCEPTED = [
    ("fortran-order", lambda x, p: np.asfortranarray(x), None),
    ("reversed-rows", lambda x, p: x[::-1], lambda x: x[::-1].copy()),
    ("strided-columns", lambda x, p: np.repeat(x, 2, axis=1)[:, ::2], None),
    ("strided-rows", lambda x, p: np.repeat(x, 3, axis=0)[1::3], None),
    ("reversed-columns-of-reversed", lambda x, p: x[:, ::-1][:, ::-1], None),
    ("transposed-view", lambda x, p: x.T.copy().T, None),
    ("slice-of-bigger-array", lambda x, p: np.pad(x, ((2, 2), (3, 5)))[2:-2, 3:-5], None),
    ("float64", lambda x, p: x.astype(np.float64), None),
    ("float16", lambda x, p: x.astype(np.float16), lambda x: x.astype(np.float16).astype(np.float32)),
    ("python-list", lambda x, p: x.tolist(), None),
    ("memmap-readonly", _memmap_readonly, None),
    ("torch", lambda x, p: torch.from_numpy(x.copy()), None),
    ("torch-transposed", lambda x, p: torch.from_numpy(x.copy()).T.contiguous().T, None),
    ("torch-strided", lambda x, p: torch.from_numpy(np.repeat(x, 2, axis=1))[:, ::2], None),
    ("torch-flipped", lambda x, p: torch.from_numpy(x.copy()).flip(0), lambda x: x[::-1].copy()),
    ("torch-float64", lambda x, p: torch.from_numpy(x.astype(np.float64)), None),
    ("torch-bfloat16", lambda x, p: torch.from_numpy(x.copy()).to(torch.bfloat16),
     lambda x: torch.from_numpy(x.copy()).to(torch.bfloat16).float().numpy()),
    ("torch-detached", lambda x, p: torch.from_numpy(x.copy()).requires_grad_().detach(), None),
    ("torch-no-grad-result", lambda x, p: _no_grad_copy(x), None),
]


def _no_grad_copy(x):
    w = torch.ones(1, requires_grad=True)
    with torch.no_grad():
        return torch.from_numpy(x.copy()) * w  # computed from a grad leaf, but requires_grad=False


@pytest.fixture(scope="module")
def reference():
    x = X[:120].copy()
    return x, LearnableLSHIndex(n_tables=3, n_bits=10, batch_size=50).add(x)


TABLE_KEYS = ("keys", "table_start", "offsets", "ids", "codes", "bucket_sum", "bucket_sqnorm")


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # torch, once per process
@pytest.mark.parametrize("variant,values", [pytest.param(*c[1:], id=c[0]) for c in ACCEPTED])
def test_accepted_inputs_score_like_contiguous_float32(reference, tmp_path, variant, values):
    """Other layouts, dtypes and containers of the same values give bit-identical tables and scores."""
    x, ref = reference
    data = variant(x, tmp_path)
    canonical = x if values is None else values(x)
    for mode in ("mean", "light", "squared"):
        np.testing.assert_array_equal(ref.score(data, mode), ref.score(canonical, mode), err_msg=mode)
    np.testing.assert_array_equal(ref.encode(data), ref.encode(canonical))
    built = LearnableLSHIndex(n_tables=3, n_bits=10, batch_size=50).add(data)
    direct = LearnableLSHIndex(n_tables=3, n_bits=10, batch_size=50).add(canonical)
    for k in TABLE_KEYS:
        np.testing.assert_array_equal(built._tables[k], direct._tables[k], err_msg=k)


def test_big_endian_floats_are_accepted(reference):
    x, ref = reference
    np.testing.assert_array_equal(ref.score(x.astype(">f4")), ref.score(x))


def test_sharded_load_of_one_path_is_one_shard(tmp_path):
    """A single path is one shard file, not a sequence of its characters ('/: cannot read')."""
    fitted().save(str(tmp_path / "s.llsh"))
    for path in (str(tmp_path / "s.llsh"), tmp_path / "s.llsh"):
        sharded = llsh_index.ShardedIndex.load(path)
        assert len(sharded.shards) == 1
        np.testing.assert_array_equal(sharded.score(X[:20]), fitted().score(X[:20]))


def test_negative_view_tensor_scores_like_its_values():
    """torch's lazy negation bit (_neg_view) is resolved, not handed to the GEMM (RuntimeError before)."""
    index = fitted()
    t = torch._neg_view(torch.from_numpy(-X[:30]))
    assert t.is_neg()
    np.testing.assert_array_equal(index.score(t), index.score(X[:30]))


def test_numpy_scalar_settings_are_accepted():
    """np.float32 / np.int64 settings are numbers like any other (np.float32 miss_value was refused
    with 'expected a finite number ..., got np.float32(1.0)')."""
    a = LearnableLSHIndex(n_tables=np.int64(2), n_bits=np.int32(8), miss_value=np.float32(1.5), seed=np.int64(3))
    b = LearnableLSHIndex(n_tables=2, n_bits=8, miss_value=1.5, seed=3)
    assert a.miss_value == 1.5 and type(a.miss_value) is float
    np.testing.assert_array_equal(a.add(X).score(X[:50] * 3), b.add(X).score(X[:50] * 3))
    assert LearnableLSHIndex(store_codes=np.bool_(True)).store_codes is True
    with pytest.raises(ConfigError, match="miss_value"):
        LearnableLSHIndex(miss_value=np.bool_(True))


def test_diverged_training_keeps_the_layers_and_says_so(monkeypatch):
    """If training ever ends with NaN layers (none of the schedules tried does), fit() raises and
    leaves the layers as they were instead of an index that scores NaN."""
    import llsh_index.index as index_module

    def diverging(encoder, feats, vid, cfg, stream=0):
        with torch.no_grad():
            encoder.weight.mul_(float("nan"))
        return index_module.TrainingLog(losses=[1.0, float("nan")], steps=2, positives="temporal")

    index = LearnableLSHIndex(D, n_tables=2, n_bits=8, seed=4)
    before = index.encoder.weight.detach().clone()
    monkeypatch.setattr(index_module, "train_moco", diverging)
    with pytest.raises(ConfigError, match="training diverged.*logged step 1.*lower lr"):
        quick_fit(index)
    assert torch.equal(index.encoder.weight, before) and not index.is_trained


def test_a_fit_refused_after_the_projection_keeps_the_layers():
    """project_pcs changes the layers in place before the first step; a fit that then fails (here the
    epoch's pairs cannot be allocated) left them projected: they are as they were, untrained."""
    index = LearnableLSHIndex(D, n_tables=2, n_bits=8, seed=4)
    before = index.encoder.weight.detach().clone()
    with pytest.raises(ConfigError, match="iterations"):
        index.fit(X, video_ids=VIDS, iterations=2 ** 40, project_pcs=3, progress=False)
    assert torch.equal(index.encoder.weight, before) and not index.is_trained

def test_failed_add_leaves_the_index_unchanged():
    index = LearnableLSHIndex(n_tables=2, n_bits=8, batch_size=32).add(X[:100])
    before = {k: None if index._tables[k] is None else index._tables[k].copy() for k in TABLE_KEYS}
    with pytest.raises(InvalidInputError):
        index.add(put(X, 150, 0, np.nan))  # fails in the 5th chunk, after 4 chunks were hashed
    assert index.ntotal == 100
    for k in TABLE_KEYS:
        np.testing.assert_array_equal(index._tables[k], before[k], err_msg=k)
    np.testing.assert_array_equal(index.add(X[100:]).score(X), LearnableLSHIndex(n_tables=2, n_bits=8).add(X).score(X))


def test_short_videos_and_a_positive_offset_beyond_them():
    """Decision, documented: a training video needs >= 2 snippets (else InvalidInputError, in the
    catalogue); a video shorter than max_offset is fine, its positives are clipped to the video."""
    from llsh_index.training import PairSampler, TrainingConfig

    vids = np.r_[np.zeros(2), np.ones(3), np.full(50, 2)].astype(np.int64)  # 2, 3 and 50 snippets
    sampler = PairSampler(len(vids), vids, TrainingConfig(iterations=200, max_offset=150))
    pairs = sampler.epoch()
    assert (vids[pairs[:, 0]] == vids[pairs[:, 1]]).all()  # positive from the same video, never outside it
    for v, n in ((0, 2), (1, 3)):
        rows = pairs[vids[pairs[:, 0]] == v]
        assert set(rows.ravel()) == set(np.flatnonzero(vids == v))  # clipped window = whole short video
    sampler = PairSampler(len(vids), vids, TrainingConfig(iterations=200, max_offset=3))
    p = sampler.epoch()
    assert np.abs(p[:, 0] - p[:, 1]).max() <= 3
    x = np.random.default_rng(0).standard_normal((len(vids), D)).astype(np.float32)
    index = LearnableLSHIndex(n_tables=2, n_bits=8).fit(x, video_ids=vids, iterations=2, batch_size=8,
                                                        queue_size=16, max_offset=150, progress=False)
    assert index.is_trained and np.isfinite(index.training_log_.losses).all()


def test_seeds_outside_32_bits_are_refused():
    """torch's CPU generator keeps 32 bits of a seed: 2**32 drew seed 0's layers and -1 seed
    2**32 - 1's. Such seeds are refused (constructor and fit) instead of silently repeating another."""
    import torch
    f = lambda s: torch.rand(3, generator=torch.Generator().manual_seed(s)).numpy()
    np.testing.assert_array_equal(f(2 ** 32), f(0))  # the aliasing the check prevents
    for seed in (2 ** 32, -1, 2 ** 64 - 1):
        with pytest.raises(ConfigError, match=rf"seed: expected 0\.\.4294967295, got {seed}"):
            LearnableLSHIndex(16, seed=seed)
        with pytest.raises(ConfigError, match="seed: expected 0..4294967295"):
            LearnableLSHIndex(16, n_tables=2, n_bits=8).fit(X, video_ids=VIDS, iterations=1, seed=seed, progress=False)
    top = LearnableLSHIndex(16, n_tables=2, n_bits=8, seed=2 ** 32 - 1)
    assert not np.array_equal(top.encoder.weight.detach().numpy(),
                              LearnableLSHIndex(16, n_tables=2, n_bits=8, seed=0).encoder.weight.detach().numpy())


def test_an_older_file_with_a_wide_seed_loads(tmp_path):
    """Older versions saved seeds such as -1: the file loads, with the seed torch actually used."""
    from llsh_index.io import read_container, write_container
    from llsh_index.index import _FILE_KIND

    index = LearnableLSHIndex(16, n_tables=2, n_bits=8, seed=5).add(X)
    path = str(tmp_path / "a.llsh")
    index.save(path)
    meta, arrays = read_container(path, _FILE_KIND)
    meta["seed"] = -1
    write_container(path, _FILE_KIND, meta, arrays)
    loaded = LearnableLSHIndex.load(path)
    assert loaded.seed == 2 ** 32 - 1
    np.testing.assert_array_equal(loaded.score(X[:7]), index.score(X[:7]))


def test_to_the_same_device_changes_nothing():
    """to("cpu") on a CPU index is a no-op: it does not build the bucket statistics a mean-mode
    index does not need (which cost more than the codes when buckets are small)."""
    index = LearnableLSHIndex(16, n_tables=2, n_bits=8).add(X)
    before, scores = index.memory_bytes(), index.score(X[:20])
    assert index.to("cpu") is index and index.memory_bytes() == before
    np.testing.assert_array_equal(index.score(X[:20]), scores)


def test_masked_arrays_are_refused_where_something_is_masked():
    """np.asarray reads the data under a mask: masked entries would be scored as data (silently)."""
    index = fitted()
    q = X[:5].copy()
    masked = np.ma.masked_array(q, mask=np.zeros_like(q, dtype=bool))
    masked.mask[1, 3] = True
    masked.data[1, 3] = 1e6
    from llsh_index.baselines import KNNScorer
    from llsh_index.sklearn import LLSHDetector

    knn = KNNScorer(k=1).fit(X)
    detector = LLSHDetector(n_tables=2, n_bits=4, train=False, calibration_folds=5).fit(X)
    for call in (index.score, index.encode, lambda a: llsh_index.LearnableLSHIndex(n_tables=2, n_bits=4).add(a),
                 knn.score, knn.fit, detector.score_samples, detector.predict):
        with pytest.raises(InvalidInputError, match="expected no masked values, got a masked array with 1 masked"):
            call(masked)
    np.testing.assert_array_equal(index.score(np.ma.masked_array(q)), index.score(q))  # nothing masked: its data


def test_snippet_length_and_step_are_bounded_everywhere_they_are_taken(tmp_path):
    """T and s had no upper bound: T=10**30 an OverflowError (np.arange), T=2**63 "need at least one
    array to stack", T=10**9 a MemoryError of (frames, T) indices.  One bound, in video._check_ts, for
    the snippet helpers, extract_video, extract_dataset and StreamScorer: a snippet spans at most
    MAX_SNIPPET_SPAN = 100000 frames."""
    from llsh_index import video

    class Means(video.FeatureExtractor):
        name, version, dim = "means", "1", 3

        def extract(self, snippets):
            return np.asarray(snippets, np.float32).mean(axis=(1, 2, 3))

    frames = np.random.default_rng(0).integers(0, 255, (6, 4, 4, 3)).astype(np.uint8)
    cache = tmp_path / "f.npz"
    for T, s, msg in ((10 ** 30, 1, "T: expected at most 100000 "), (2 ** 63, 1, "T: expected at most 100000 "),
                      (10 ** 9, 1, "T: expected at most 100000 "), (3, 10 ** 30, "s: expected at most 100000 "),
                      (1001, 100, r"T, s: a snippet spans \(T - 1\) \* s \+ 1 frames, expected at most 100000, got "
                                  r"100001 \(T 1001, s 100\)")):
        for call in (lambda: video.snippet_starts(10, T, s), lambda: video.snippet_centres(10, T, s, clamp=True),
                     lambda: video.snippet_frame_indices(10, T, s, clamp=True),
                     lambda: video.extract_video(frames, Means(), T=T, s=s, progress=False),
                     lambda: video.extract_dataset({"a": frames}, Means(), T=T, s=s, cache=str(cache),
                                                   progress=False)):
            with pytest.raises(ConfigError, match=msg):
                call()
    assert not cache.exists()  # refused before anything was extracted or written
    # the bound itself is taken: every frame's snippet, the ends repeated
    idx = video.snippet_frame_indices(3, 100_000, 1, clamp=True)
    assert idx.shape == (3, 100_000) and idx.min() == 0 and idx.max() == 2
    assert (idx[:, :49_999] == 0).all() and (idx[:, -49_998:] == 2).all()
    feats, meta = video.extract_dataset({"a": frames}, Means(), T=2, s=99_999, progress=False)
    np.testing.assert_allclose(feats["a"][0], frames[[0, 5]].astype(np.float32).mean(axis=(0, 1, 2)), rtol=1e-6)
    assert meta["T"] == 2 and meta["s"] == 99_999


def test_detector_miss_value_beyond_float64_is_a_config_error():
    """LLSHDetector(miss_value=10**400).fit raised an untyped OverflowError (the index's check)."""
    from llsh_index.sklearn import LLSHDetector

    with pytest.raises(ConfigError, match="miss_value: expected a finite number >= 0 .*got an integer of 401 digits"):
        LLSHDetector(n_tables=2, n_bits=4, miss_value=10 ** 400, train=False).fit(X)
    big = LLSHDetector(n_tables=2, n_bits=4, miss_value=10 ** 30, train=False, calibration_folds=2).fit(X)
    assert big.index_.miss_value == 1e30


# ----------------------------------------------------------------------------- review fixes: huge ints


def test_ints_beyond_the_str_limit_are_config_errors():
    """miss_value=10**5000 and as_real(10**5000): their messages counted digits with len(str(int)),
    which raises ValueError past Python's 4300-digit int-to-str limit.  Counted from bit_length now,
    exactly (checked here against str with the limit lifted), and estimated for the very largest."""
    import sys

    from llsh_index._validation import as_real, huge_int_words
    from llsh_index.index import _check_miss_value

    with pytest.raises(ConfigError, match=r"miss_value: expected a finite number >= 0 .*got an integer of 5001 "
                                          r"digits$"):
        LearnableLSHIndex(4, miss_value=10 ** 5000)
    with pytest.raises(ConfigError, match=r"miss_value: .* or \+inf, got a negative integer of 5001 digits$"):
        _check_miss_value(-(10 ** 5000), allow_inf=True)
    with pytest.raises(ConfigError, match=r"lr: expected a number within float64's range, got a negative integer of "
                                          r"5001 digits$"):
        as_real(-(10 ** 5000), "lr")
    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    try:
        if limit:
            sys.set_int_max_str_digits(0)
        for k in (1, 2, 308, 400, 4300, 4301, 5000, 39_000):
            for n in (10 ** k - 1, 10 ** k, 2 ** int(k * 3.33), 7 * 10 ** k):
                assert huge_int_words(n) == f"an integer of {len(str(n))} digits"
                assert huge_int_words(-n) == f"a negative integer of {len(str(n))} digits"
                assert huge_int_words(-n, signed=False) == f"an integer of {len(str(n))} digits"
    finally:
        if limit:
            sys.set_int_max_str_digits(limit)
    assert huge_int_words(2 ** 400_000) == "an integer of about 120412 digits (400001 bits)"
