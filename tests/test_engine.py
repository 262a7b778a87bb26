"""The native engine (binarize, build_tables, lookup) against the NumPy oracle of the paper."""
import numpy as np
import pytest

import oracle
from llsh_index import _engine

MODES = ["mean", "light", "squared"]


def run_engine(codes, queries, mode, miss=1e10, code_dtype=np.float32):
    n, b, r = codes.shape
    keys = _engine.binarize(codes.astype(np.float32))  # (n, b)
    stored = codes.astype(code_dtype).transpose(1, 0, 2).copy()
    ids = np.broadcast_to(np.arange(n, dtype=np.int64), (b, n)).copy()
    tables = _engine.build_tables(np.ascontiguousarray(keys.T), stored, ids)
    q = queries.astype(np.float32)
    out, visited = _engine.lookup(tables, q, _engine.binarize(q), _engine.MODES[mode], miss)
    return tables, out, visited


def check(codes, queries, mode, code_dtype=np.float32, atol=1e-5):
    codes32 = codes.astype(np.float32)
    stored = codes32.astype(code_dtype).astype(np.float32)  # what the engine really stores
    expected = oracle.table_distances(oracle.build(codes32, stored), queries.astype(np.float32), mode, 1e10)
    _, got, _ = run_engine(codes, queries, mode, code_dtype=code_dtype)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=atol)
    return got, expected


def random_codes(rng, n, b, r, spread=1.0):
    return 1 / (1 + np.exp(-spread * rng.standard_normal((n, b, r))))


def test_binarize_packs_bits_little_endian(rng):
    codes = rng.random((50, 3, 64)).astype(np.float32)
    codes[0, 0, :] = 0.5  # exactly 0.5 is a 1 bit (sigmoid >= 0.5)
    keys = _engine.binarize(codes)
    for i in range(50):
        for j in range(3):
            assert int(keys[i, j]) == oracle.pack(codes[i, j])
    assert int(keys[0, 0]) == 2 ** 64 - 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("b,r", [(8, 32), (1, 8), (3, 1), (2, 64), (4, 5)])
def test_random_against_oracle(rng, mode, b, r):
    codes = random_codes(rng, 400, b, r, spread=0.5)
    # half the queries are stored items (always hit), half are fresh (may miss)
    queries = np.concatenate([codes[:40], random_codes(rng, 40, b, r, spread=0.5)])
    got, expected = check(codes, queries, mode)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("mode", MODES)
def test_all_items_in_one_bucket(rng, mode):
    codes = 0.5 + 0.5 * rng.random((300, 2, 16))  # every bit 1 -> one bucket per table
    tables, got, visited = run_engine(codes, codes[:10], mode)
    assert len(tables["keys"]) == 2 and list(np.diff(tables["offsets"])) == [300, 300]
    check(codes, codes[:10], mode)
    if mode == "mean":
        assert visited == 10 * 2 * 300


@pytest.mark.parametrize("mode", MODES)
def test_all_items_unique(rng, mode):
    n, r = 256, 8
    bits = ((np.arange(n)[:, None] >> np.arange(r)) & 1).astype(np.float64)
    codes = (0.1 + 0.8 * bits + 0.05 * rng.random((n, r)))[:, None, :]  # b = 1, all 256 keys distinct
    tables, _, _ = run_engine(codes, codes, mode)
    assert len(tables["keys"]) == n and np.all(np.diff(tables["offsets"]) == 1)
    got, _ = check(codes, codes[rng.permutation(n)[:30]], mode)
    if mode != "light":
        assert np.all(got < 0.05 * r)


@pytest.mark.parametrize("mode", MODES)
def test_queries_that_hit_no_bucket(rng, mode):
    codes = 0.6 + 0.3 * rng.random((100, 3, 12))       # all keys 0xFFF
    queries = 0.1 + 0.3 * rng.random((7, 3, 12))       # all keys 0
    _, got, visited = run_engine(codes, queries, mode, miss=123.5)
    assert np.all(got == np.float32(123.5)) and visited == 0


def test_float16_storage(rng):
    codes = random_codes(rng, 500, 4, 32, spread=0.3)
    for mode in MODES:
        check(codes, codes[:25], mode, code_dtype=np.float16)


def test_sort_order_is_key_then_id(rng):
    codes = random_codes(rng, 1000, 2, 4)
    tables, _, _ = run_engine(codes, codes[:1], "mean")
    keys, ts, off, ids = tables["keys"], tables["table_start"], tables["offsets"], tables["ids"]
    for j in range(2):
        k = keys[ts[j]:ts[j + 1]]
        assert np.all(k[1:] > k[:-1])
        for u in range(ts[j], ts[j + 1]):
            bucket_ids = ids[off[u]:off[u + 1]]
            assert np.all(np.diff(bucket_ids) > 0)
            assert all(oracle.pack(codes[i, j]) == keys[u] for i in bucket_ids)
    # codes in bucket order are the items' codes
    np.testing.assert_array_equal(tables["codes"][:1000], codes[ids[:1000], 0].astype(np.float32))
    # statistics are the per-bucket sums of the stored codes
    u = 0
    rows = tables["codes"][off[u]:off[u + 1]].astype(np.float64)
    np.testing.assert_allclose(tables["bucket_sum"][u], rows.sum(0), rtol=1e-12)
    np.testing.assert_allclose(tables["bucket_sqnorm"][u], (rows ** 2).sum(), rtol=1e-12)


def test_threads_do_not_change_results(rng):
    from llsh_index import _C

    codes = random_codes(rng, 2000, 4, 16, spread=0.3).astype(np.float32)
    keys = _engine.binarize(codes)
    stored = codes.transpose(1, 0, 2).copy()
    ids = np.broadcast_to(np.arange(2000, dtype=np.int64), (4, 2000)).copy()
    t1 = _C.build_tables_cpu(np.ascontiguousarray(keys.T), stored, ids, n_threads=1)
    t4 = _C.build_tables_cpu(np.ascontiguousarray(keys.T), stored, ids, n_threads=4)
    for k in ("keys", "offsets", "ids", "codes", "bucket_sum", "bucket_sqnorm"):
        np.testing.assert_array_equal(t1[k], t4[k])
    t1["n_items"] = t4["n_items"] = 2000
    q = codes[:300]
    a = _engine.lookup(t1, q, keys[:300], 0, 1e10, n_threads=1)[0]
    b = _engine.lookup(t4, q, keys[:300], 0, 1e10, n_threads=3)[0]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_in_place_and_deferred_statistics_equal_the_plain_build(rng, dtype):
    """add() hands its codes over (sorted in place) and leaves the bucket statistics for later:
    both give bit for bit the tables of the plain build, and the derived statistics equal the eager ones."""
    codes = random_codes(rng, 3000, 3, 20, spread=0.3).astype(np.float32)
    keys = np.ascontiguousarray(_engine.binarize(codes).T)
    stored = codes.astype(dtype).transpose(1, 0, 2).copy()
    ids = np.broadcast_to(np.arange(3000, dtype=np.int64), (3, 3000)).copy()
    plain = _engine.build_tables(keys, stored.copy(), ids)
    lazy = _engine.build_tables(keys, stored, ids, in_place=True, with_stats=False)
    assert lazy["bucket_sum"] is None and lazy["bucket_sqnorm"] is None
    assert np.shares_memory(lazy["codes"], stored)  # no second copy of the codes
    for k in ("keys", "table_start", "offsets", "ids", "codes"):
        np.testing.assert_array_equal(lazy[k], plain[k], err_msg=k)
    q = codes[:200]
    for mode in MODES:  # "mean" needs no statistics; the others derive them once
        got = _engine.lookup(lazy, q, _engine.binarize(q), _engine.MODES[mode], 1e10)[0]
        np.testing.assert_array_equal(got, _engine.lookup(plain, q, _engine.binarize(q), _engine.MODES[mode], 1e10)[0])
    for k in ("bucket_sum", "bucket_sqnorm"):
        np.testing.assert_array_equal(lazy[k], plain[k], err_msg=k)


def test_ids_in_any_order_sort_like_ascending_ids(rng):
    """The radix sort orders by (key, id) for ids in any order, negative ones included."""
    codes = random_codes(rng, 1500, 2, 6, spread=0.3).astype(np.float32)  # 6 bits: large buckets
    keys = np.ascontiguousarray(_engine.binarize(codes).T)
    stored = codes.transpose(1, 0, 2).copy()
    ids = np.stack([rng.permutation(1500) - 700, rng.permutation(1500) * 3]).astype(np.int64)
    t = _engine.build_tables(keys, stored, ids)
    off, ts = t["offsets"], t["table_start"]
    for j in range(2):
        for u in range(ts[j], ts[j + 1]):
            assert np.all(np.diff(t["ids"][off[u]:off[u + 1]]) > 0)
    assert sorted(t["ids"][:1500].tolist()) == sorted(ids[0].tolist())


def test_row_moments_match_float64(rng):
    from llsh_index import _C

    x = (rng.standard_normal((300, 37)) * rng.uniform(0.1, 10, (300, 1)) + 2).astype(np.float32)
    x[5] = np.inf
    mean, rstd = _C.row_moments_cpu(x, 1e-5)
    ref = x[6:].astype(np.float64)
    np.testing.assert_allclose(mean[6:], ref.mean(1), rtol=1e-6)
    np.testing.assert_allclose(rstd[6:], 1 / np.sqrt(ref.var(1) + 1e-5), rtol=1e-5)
    assert np.isnan(mean[5]) and np.isnan(rstd[5])  # rejected downstream as a non-finite row
