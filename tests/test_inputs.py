"""The catalogue of bad inputs: each gets a typed error naming what was expected and what came.

One parametrised table, so a new case is one line.
"""
import numpy as np
import pytest
import torch

import llsh_index
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
    ("n-bits-0", lambda: LearnableLSHIndex(n_bits=0), ConfigError, ["n_bits", "1..64", "0"]),
    ("n-bits-65", lambda: LearnableLSHIndex(n_bits=65), ConfigError, ["n_bits", "1..64", "65"]),
    ("n-bits-float", lambda: LearnableLSHIndex(n_bits=8.0), ConfigError, ["n_bits", "integer"]),
    ("n-tables-0", lambda: LearnableLSHIndex(n_tables=0), ConfigError, ["n_tables", ">= 1", "0"]),
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
]


@pytest.mark.parametrize("action,error,words", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
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


def test_errors_are_also_builtin_types():
    assert issubclass(InvalidInputError, ValueError) and issubclass(InvalidDTypeError, TypeError)
    assert issubclass(NotFittedError, RuntimeError) and issubclass(IndexFormatError, ValueError)
