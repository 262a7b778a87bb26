"""Multi-probe lookups (index.score(..., n_probes=P)) against the NumPy oracle's probe sequence."""
import numpy as np
import pytest
import torch

import oracle
from conftest import need_cuda
from llsh_index import LearnableLSHIndex, probing
from llsh_index.errors import ConfigError


def data(rng, n=400, m=60, d=24, spread=0.6):
    centres = rng.standard_normal((6, d)) * 2
    train = centres[rng.integers(0, 6, n)] + spread * rng.standard_normal((n, d))
    test = np.concatenate([train[:m // 3] + 0.3 * rng.standard_normal((m // 3, d)),
                           centres[rng.integers(0, 6, m - m // 3)] + 1.5 * rng.standard_normal((m - m // 3, d))])
    return train.astype(np.float32), test.astype(np.float32)


@pytest.mark.parametrize("mode", ["mean", "light", "squared"])
@pytest.mark.parametrize("b,r,n_probes", [(4, 12, 2), (4, 12, 7), (3, 12, 40), (2, 1, 3), (2, 3, 50), (2, 64, 9)])
def test_probe_distances_match_oracle(rng, mode, b, r, n_probes):
    train, test = data(rng)
    index = LearnableLSHIndex(n_tables=b, n_bits=r, mode=mode, miss_value=1e10, seed=3).add(train)
    tables = oracle.build(index.encode(train))
    codes, _ = index.hash_queries(test)
    expected = oracle.probe_table_distances(tables, codes, n_probes, mode, 1e10)
    got = index.table_distances(test, n_probes=n_probes)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(index.score(test, n_probes=n_probes), expected.min(axis=1), rtol=1e-5, atol=1e-5)
    if r > 1:  # the probes must matter on this data, or the comparison above proves little
        single = oracle.table_distances(tables, codes, mode, 1e10)
        assert (expected < single).any()


def test_one_probe_is_the_paper(rng):
    train, test = data(rng)
    index = LearnableLSHIndex(n_tables=4, n_bits=16).add(train)
    np.testing.assert_array_equal(index.table_distances(test, n_probes=1), index.table_distances(test))


def test_more_probes_never_increase_a_distance(rng):
    # the first P probes are a prefix of the first P + 1, so the minimum can only fall
    train, test = data(rng)
    index = LearnableLSHIndex(n_tables=4, n_bits=16).add(train)
    prev = index.table_distances(test)
    for p in (2, 3, 5, 9, 17, 40):
        cur = index.table_distances(test, n_probes=p)
        assert (cur <= prev).all()
        prev = cur
    assert (prev < index.table_distances(test)).any()


def test_all_probes_reach_hamming_radius_two(rng):
    # r = 4: 1 + 4 + 6 = 11 probes are every key within Hamming distance 2 of the query's
    train, test = data(rng)
    index = LearnableLSHIndex(n_tables=3, n_bits=4, miss_value=1e10).add(train)
    codes, _ = index.hash_queries(test)
    tr = index.encode(train)
    want = np.full((len(test), 3), 1e10)
    for j in range(3):
        bits = tr[:, j] >= 0.5
        for key in np.unique(bits, axis=0):
            members = tr[np.all(bits == key, axis=1), j].astype(np.float64)
            for i in range(len(test)):
                if np.sum(key != (codes[i, j] >= 0.5)) <= 2:
                    v = np.linalg.norm(members - codes[i, j], axis=1).mean()
                    want[i, j] = min(want[i, j], v)
    for p in (11, 12, 1000):
        np.testing.assert_allclose(index.table_distances(test, n_probes=p), want, rtol=1e-5, atol=1e-5)
    assert probing.n_candidates(4, 1000) == 11


def test_probe_masks_rank_by_summed_confidence():
    # bits 0..3 with confidences |c - 0.5| = 0.4, 0.05, 0.2, 0.1
    codes = np.array([[[0.9, 0.45, 0.3, 0.6]]], np.float32)
    masks = probing.probe_masks(codes, 7)[0, 0].tolist()
    # costs: {} 0, {1} .05, {3} .1, {1,3} .15, {2} .2, {1,2} .25, {2,3} .3
    assert masks == [0, 0b0010, 0b1000, 0b1010, 0b0100, 0b0110, 0b1100]


def test_bit_63_is_probed_like_any_other():
    codes = np.full((1, 1, 64), 0.9, np.float32)
    codes[0, 0, 63] = 0.51
    mask = probing.probe_masks(codes, 2)[0, 0, 1]
    keys = np.zeros((1, 1), np.uint64)
    assert probing.xor_keys(keys, probing.probe_masks(codes, 2)[:, :, 1])[0, 0] == np.uint64(1) << np.uint64(63)
    assert int(mask) == -(1 << 63)


def test_torch_queries_and_compared_count(rng):
    train, test = data(rng)
    index = LearnableLSHIndex(n_tables=4, n_bits=12).add(train)
    a = index.table_distances(test, n_probes=5)
    single_compared = (index.table_distances(test), index.last_n_compared)[1]
    b = index.table_distances(torch.from_numpy(test), n_probes=5)
    np.testing.assert_array_equal(a, b)
    assert index.last_n_compared > single_compared


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_bad_n_probes_is_a_config_error(rng, bad):
    train, test = data(rng)
    index = LearnableLSHIndex(n_tables=2, n_bits=8).add(train)
    with pytest.raises(ConfigError, match="n_probes"):
        index.score(test, n_probes=bad)


def missed_oracle(tables, codes, n_probes, miss_probes, mode, miss):
    """The paper's (or n_probes') table distances; a row that missed every table is the oracle's
    miss_probes lookup instead."""
    first = oracle.probe_table_distances(tables, codes, n_probes, mode, miss)
    dead = (first == miss).all(axis=1)
    again = oracle.probe_table_distances(tables, codes[dead], miss_probes, mode, miss)
    out = first.copy()
    out[dead] = again
    return out, dead


@pytest.mark.parametrize("mode", ["mean", "light", "squared"])
@pytest.mark.parametrize("b,r,n_probes,miss_probes", [(3, 16, 1, 2), (3, 16, 1, 40), (2, 12, 3, 20), (2, 24, 1, 300)])
def test_miss_probes_match_oracle(rng, mode, b, r, n_probes, miss_probes):
    train, test = data(rng)
    index = LearnableLSHIndex(n_tables=b, n_bits=r, mode=mode, miss_value=1e10, seed=3).add(train)
    tables = oracle.build(index.encode(train))
    codes, _ = index.hash_queries(test)
    want, dead = missed_oracle(tables, codes, n_probes, miss_probes, mode, 1e10)
    # the case must occur: queries that miss every table, and some the extra probes then find
    assert dead.sum() >= 3 and (want[dead] < 1e10).any()
    got = index.table_distances(test, n_probes=n_probes, miss_probes=miss_probes)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(index.score(test, n_probes=n_probes, miss_probes=miss_probes), want.min(axis=1),
                               rtol=1e-5, atol=1e-5)
    # rows that hit a table are the plain lookup's, bit for bit
    np.testing.assert_array_equal(got[~dead], index.table_distances(test, n_probes=n_probes)[~dead])
    got_t = index.table_distances(torch.from_numpy(test), n_probes=n_probes, miss_probes=miss_probes)
    np.testing.assert_array_equal(got_t, got)


def test_miss_probes_without_misses_change_nothing(rng):
    train, _ = data(rng)
    index = LearnableLSHIndex(n_tables=4, n_bits=8).add(train)
    q = train[:50] + 1e-4  # every query's own bucket exists
    np.testing.assert_array_equal(index.table_distances(q, miss_probes=30), index.table_distances(q))


def test_miss_probes_count_the_extra_comparisons(rng):
    train, test = data(rng)
    index = LearnableLSHIndex(n_tables=3, n_bits=16, seed=3).add(train)
    index.table_distances(test)
    plain = index.last_n_compared
    index.table_distances(test, miss_probes=40)
    assert index.last_n_compared > plain


def test_probe_missed_on_torch_equals_numpy(rng):
    # the CUDA engine hands probing torch tensors (uint64 keys included); the same code runs on CPU tensors here
    train, test = data(rng)
    index = LearnableLSHIndex(n_tables=3, n_bits=16, seed=3, miss_value=1e10).add(train)
    codes, keys = index.hash_queries(test)
    want = index.table_distances(test, miss_probes=40)

    def lookup(c, k, rows=None):  # the engine's lookup of numpy rows, +inf where the bucket is absent
        c, k = np.asarray(c), np.asarray(k.numpy() if isinstance(k, torch.Tensor) else k)
        d = index.partial_scores(query_codes=c, query_keys=k)
        return np.where(d["count"] > 0, index.combine_partial_scores([d], return_distances=True), np.inf)

    def lookup_t(c, k, rows):
        return torch.from_numpy(lookup(c.numpy(), k.view(torch.int64).numpy().view(np.uint64)))

    first = lookup(codes, keys)
    assert np.isinf(first).all(axis=1).sum() >= 3
    got = probing.probe_missed(codes, keys, first.copy(), 40, lookup, 1e10)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    tk = torch.from_numpy(keys.view(np.int64)).view(torch.uint64)
    got_t = probing.probe_missed(torch.from_numpy(codes), tk, torch.from_numpy(first.copy()), 40, lookup_t, 1e10)
    assert isinstance(got_t, torch.Tensor)
    np.testing.assert_array_equal(got_t.numpy(), got)


def test_miss_probes_skip_the_ranks_already_looked_up(rng):
    # a query that missed with n_probes probes missed at those ranks: the re-probe starts after them
    train, test = data(rng)
    index = LearnableLSHIndex(n_tables=3, n_bits=16, seed=3, miss_value=1e10).add(train)
    codes, keys = index.hash_queries(test)
    calls = []

    def lookup(c, k, rows):
        calls.append(len(c))
        assert rows is None or len(rows) == len(c)  # the rows whose codes these are
        d = index.partial_scores(query_codes=c, query_keys=k)
        return np.where(d["count"] > 0, index.combine_partial_scores([d], return_distances=True, query_codes=c),
                        np.inf)

    got = probing.probed_distances(codes, keys, 3, 20, lookup, 1e10)
    np.testing.assert_allclose(got, index.table_distances(test, n_probes=3, miss_probes=20), rtol=1e-6, atol=1e-6)
    dead = int(np.isinf(probing.probed_distances(codes, keys, 3, 0, lookup, np.inf)).all(axis=1).sum())
    assert dead >= 3
    assert calls[:20] == [len(test)] * 3 + [dead] * 17  # 3 ranks for all, ranks 3..19 for the missed only


@pytest.mark.parametrize("bad,n_probes", [(-1, 1), (1, 1), (3, 3), (2, 5), (1.5, 1), ("8", 1), (None, 1)])
def test_bad_miss_probes_is_a_config_error(rng, bad, n_probes):
    train, test = data(rng)
    index = LearnableLSHIndex(n_tables=2, n_bits=8).add(train)
    with pytest.raises(ConfigError, match="miss_probes"):
        index.score(test, n_probes=n_probes, miss_probes=bad)


@pytest.mark.gpu
def test_cuda_probes_equal_cpu(rng):
    need_cuda()
    train, test = data(rng)
    gpu = LearnableLSHIndex(n_tables=4, n_bits=12, seed=1, miss_value=1e10).to("cuda")
    gpu.add(torch.from_numpy(train).cuda())
    q = torch.from_numpy(test).cuda()
    # the oracle takes the GPU's own codes: a CPU GEMM may round a near-tie of confidences the other way
    tables = oracle.build(np.asarray(torch.as_tensor(gpu.encode(torch.from_numpy(train).cuda())).cpu()))
    codes = gpu.hash_queries(q)[0].cpu().numpy()
    for mode in ("mean", "light", "squared"):
        want = oracle.probe_table_distances(tables, codes, 9, mode, 1e10)
        got = gpu.table_distances(q, mode, n_probes=9)
        assert isinstance(got, torch.Tensor) and got.device.type == "cuda"
        np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-5, atol=1e-5)
        got = gpu.table_distances(q, mode, miss_probes=20)
        want, dead = missed_oracle(tables, codes, 1, 20, mode, 1e10)
        assert dead.any()
        np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-5, atol=1e-5)
