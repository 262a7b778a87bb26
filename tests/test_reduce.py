"""score(..., reduce="mean") (ours): the mean over the tables whose bucket exists, against the NumPy oracle."""
import numpy as np
import pytest
import torch

import oracle
from conftest import need_cuda
from llsh_index import LearnableLSHIndex
from llsh_index.errors import ConfigError
from test_probing import data


def mean_over_hits(distances, miss_value):
    """Per query: the mean of the finite table distances (+inf = absent bucket); none -> miss_value."""
    out = np.full(len(distances), float(miss_value))
    for i, row in enumerate(distances):
        hits = row[np.isfinite(row)]
        if hits.size:
            out[i] = hits.mean()
    return out


@pytest.mark.parametrize("mode", ["mean", "light", "squared"])
@pytest.mark.parametrize("miss_value", [None, 0.0, 1e10])
@pytest.mark.parametrize("n_probes,miss_probes", [(1, 0), (5, 0), (1, 20)])
def test_mean_over_tables_matches_oracle(rng, mode, miss_value, n_probes, miss_probes):
    train, test = data(rng)
    index = LearnableLSHIndex(n_tables=4, n_bits=14, mode=mode, miss_value=miss_value, seed=3).add(train)
    tables = oracle.build(index.encode(train))
    codes, _ = index.hash_queries(test)
    d = oracle.probe_table_distances(tables, codes, n_probes, mode, np.inf)
    if miss_probes:  # the rows that missed every table: the oracle's miss_probes lookup
        dead = np.isinf(d).all(axis=1)
        d[dead] = oracle.probe_table_distances(tables, codes[dead], miss_probes, mode, np.inf)
    miss = index.default_miss_value(mode)
    want = mean_over_hits(d, miss)
    # the cases occur: a query hitting some tables only, and (before any re-probe) one hitting none
    assert (np.isinf(d).any(axis=1) & ~np.isinf(d).all(axis=1)).any()
    assert np.isinf(oracle.probe_table_distances(tables, codes, n_probes, mode, np.inf)).all(axis=1).any()
    got = index.score(test, n_probes=n_probes, miss_probes=miss_probes, reduce="mean")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(index.score(torch.from_numpy(test), n_probes=n_probes, miss_probes=miss_probes,
                                              reduce="mean"), got)


def test_min_is_the_paper(rng):
    train, test = data(rng)
    index = LearnableLSHIndex(n_tables=4, n_bits=14, miss_value=0.0).add(train)  # a miss value below every hit
    np.testing.assert_array_equal(index.score(test, reduce="min"), index.table_distances(test).min(axis=1))
    np.testing.assert_array_equal(index.score(test, reduce="min"), index.score(test))


@pytest.mark.parametrize("bad", ["max", "MEAN", None, 1])
def test_bad_reduce_is_a_config_error(rng, bad):
    train, test = data(rng)
    index = LearnableLSHIndex(n_tables=2, n_bits=8).add(train)
    with pytest.raises(ConfigError, match="reduce"):
        index.score(test, reduce=bad)


@pytest.mark.gpu
def test_cuda_mean_over_tables_equals_cpu(rng):
    need_cuda()
    train, test = data(rng)
    gpu = LearnableLSHIndex(n_tables=4, n_bits=14, seed=1).to("cuda")
    gpu.add(torch.from_numpy(train).cuda())
    q = torch.from_numpy(test).cuda()
    tables = oracle.build(np.asarray(torch.as_tensor(gpu.encode(torch.from_numpy(train).cuda())).cpu()))
    codes = gpu.hash_queries(q)[0].cpu().numpy()
    for mode in ("mean", "light", "squared"):
        want = mean_over_hits(oracle.probe_table_distances(tables, codes, 3, mode, np.inf),
                              gpu.default_miss_value(mode))
        got = gpu.score(q, mode, n_probes=3, reduce="mean")
        assert isinstance(got, torch.Tensor) and got.device.type == "cuda"
        np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-5, atol=1e-5)


def test_reduce_tables_on_torch_equals_numpy(rng):
    # the CUDA engine hands reduce_tables torch tensors; the same code runs on CPU tensors here
    from llsh_index.index import reduce_tables

    d = rng.random((50, 6)).astype(np.float32)
    d[rng.random((50, 6)) < 0.4] = np.inf
    d[:3] = np.inf  # queries that hit no table
    for reduce in ("min", "mean"):
        want = reduce_tables(d.copy(), reduce, 7.0)
        assert (want[:3] == 7.0).all()
        if reduce == "mean":
            np.testing.assert_allclose(want, mean_over_hits(d, 7.0), rtol=1e-6)
        got = reduce_tables(torch.from_numpy(d.copy()), reduce, 7.0)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
