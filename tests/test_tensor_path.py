"""The index's device (torch tensor) code path, exercised on the CPU.

On a GPU, LearnableLSHIndex keeps its tables as torch tensors and calls llsh_index._cuda_engine.
Here that engine is stood in for by the C++ CPU engine behind the same tensor API, so the index's
own tensor handling (uint64 keys, table-major copies, merges, save from tensors, load to tensors)
runs in CI; the CUDA kernels themselves are checked by tests/test_cuda_engine.py on a GPU.
"""
import numpy as np
import pytest
import torch

import fake_device as fake
import llsh_index
from llsh_index import LearnableLSHIndex


@pytest.fixture
def fake_device(monkeypatch):
    fake.install(monkeypatch)


def data(rng, n=1500, d=24):
    centres = rng.standard_normal((5, d)) * 2
    return (centres[rng.integers(0, 5, n)] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)


@pytest.mark.parametrize("code_dtype", ["float32", "float16"])
@pytest.mark.parametrize("store_codes", [True, False])
def test_tensor_path_matches_numpy_path(rng, fake_device, tmp_path, code_dtype, store_codes):
    x = data(rng)
    mode = "mean" if store_codes else "light"
    kw = dict(n_tables=4, n_bits=12, code_dtype=code_dtype, store_codes=store_codes, mode=mode, batch_size=400)
    ref = LearnableLSHIndex(**kw).add(x[:1000]).add(x[1000:])
    dev = LearnableLSHIndex(**kw)
    dev.add(torch.from_numpy(x[:1000])).add(torch.from_numpy(x[1000:]))
    for k, v in ref._tables.items():
        if k == "n_items" or v is None:
            continue
        got = dev._tables[k]
        assert isinstance(got, torch.Tensor), k
        np.testing.assert_array_equal(got.numpy(), v, err_msg=k)
    for m in (["mean"] if store_codes else []) + ["light", "squared"]:
        got = dev.score(torch.from_numpy(x[:200]), mode=m)
        assert isinstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), ref.score(x[:200], mode=m))
        # multi-probe: torch keys XOR their masks, minimum and miss fill on tensors
        q = x[1400:] + rng.standard_normal(x[1400:].shape).astype(np.float32)  # some miss every probe
        got = dev.table_distances(torch.from_numpy(q), mode=m, n_probes=6)
        assert isinstance(got, torch.Tensor)
        want = ref.table_distances(q, mode=m, n_probes=6)
        np.testing.assert_array_equal(got.numpy(), want)
        assert (want == ref.default_miss_value(m)).any() and (want < ref.default_miss_value(m)).any()
    # a file saved from tensor tables loads as numpy tables with the same scores
    dev.save(str(tmp_path / "dev.llsh"))
    loaded = LearnableLSHIndex.load(str(tmp_path / "dev.llsh"))
    np.testing.assert_array_equal(loaded.score(x[:200]), ref.score(x[:200]))


def test_tensor_path_merge(rng, fake_device):
    x = data(rng)
    a = LearnableLSHIndex(24, n_tables=3, n_bits=10).add(torch.from_numpy(x[:700]))
    b = a.empty_like()
    b.add(torch.from_numpy(x[700:]))
    merged = LearnableLSHIndex.merge_all([a, b])
    single = LearnableLSHIndex(24, n_tables=3, n_bits=10).add(x)
    for k in ("keys", "offsets", "ids", "codes"):
        np.testing.assert_array_equal(np.asarray(merged._tables[k]), single._tables[k], err_msg=k)
    np.testing.assert_array_equal(merged.score(torch.from_numpy(x[:100])).numpy(), single.score(x[:100]))


def test_cuda_available_reports_a_reason():
    ok, why = llsh_index.cuda_available(verbose=True)
    assert isinstance(ok, bool) and isinstance(why, str) and why
