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


@pytest.mark.parametrize("dim", [37, 16, 1, 2304])
def test_row_moments_match_float64(rng, dim):
    """float32 lanes against NumPy's float64 two-pass mean and variance: the error is relative to
    the row's spread, which is what LayerNorm divides by (rows with |mean| up to 20 sigma, and
    rows with one huge outlier, first or last)."""
    from llsh_index import _C

    n = 300
    scale = rng.uniform(0.1, 10, (n, 1))
    offset = rng.uniform(-20, 20, (n, 1)) * scale
    x = (rng.standard_normal((n, dim)) * scale + offset).astype(np.float32)
    x[5, -1] = np.inf
    x[9, 0] = np.nan
    x[11, 0] = 1e6 * scale[11, 0]  # one outlier, where the shift of a one-pass E[x^2] - mean^2 sits
    x[12, -1] = -3e5 * scale[12, 0]
    mean, rstd = _C.row_moments_cpu(x, 1e-5)
    ok = np.setdiff1d(np.arange(n), [5, 9])
    ref = x[ok].astype(np.float64)
    sigma = np.sqrt(ref.var(1) + 1e-5)
    assert np.all(np.abs(mean[ok] - ref.mean(1)) <= 2e-6 * sigma)
    if dim > 1:
        np.testing.assert_allclose(rstd[ok], 1 / sigma, rtol=2e-5)
    else:
        np.testing.assert_array_equal(rstd[ok], np.float32(1 / np.sqrt(1e-5)))  # a single column: var 0
    assert np.isnan(mean[[5, 9]]).all() and np.isnan(rstd[[5, 9]]).all()  # rejected downstream


def test_row_moments_overflowing_variance_is_rejected():
    """A finite row whose float32 variance overflows (as LayerNorm's would) gets NaN statistics."""
    from llsh_index import _C

    x = np.zeros((2, 64), np.float32)
    x[0, ::2] = 3e38
    x[1] = 1.0
    mean, rstd = _C.row_moments_cpu(x, 1e-5)
    assert np.isnan(mean[0]) and np.isnan(rstd[0])
    assert mean[1] == 1.0 and rstd[1] == np.float32(1 / np.sqrt(1e-5))


def test_device_row_moments_overflowing_variance_is_rejected():
    """The device fold's statistics (HashEncoder._row_moments, torch ops, run here on CPU tensors) give
    NaN, as row_moments_cpu does, for a finite row whose float32 sum of squares overflows: not
    var = inf, rstd = 0 and all-zero logits, which would score the row silently on a GPU."""
    import torch

    from llsh_index import _C
    from llsh_index.encoder import HashEncoder

    x = np.zeros((3, 64), np.float32)
    x[0, ::2], x[0, 1::2] = 1e20, -1e20  # mean 0, sum of squares beyond float32
    x[1] = 1.0
    x[2] = np.arange(64)
    mean, rstd = HashEncoder._row_moments(torch.from_numpy(x))
    assert torch.isnan(mean[0]) and torch.isnan(rstd[0])
    cpu_mean, cpu_rstd = _C.row_moments_cpu(x, 1e-5)
    assert np.isnan(cpu_mean[0]) and np.isnan(cpu_rstd[0])
    np.testing.assert_allclose(mean[1:].numpy(), cpu_mean[1:], rtol=1e-6)
    np.testing.assert_allclose(rstd[1:].numpy(), cpu_rstd[1:], rtol=1e-5)


# ---------------------------------------------------------------------- lookup directory
def _lookup(t, q, qk, mode, directory, r):
    from llsh_index import _C

    codes = t["codes"]
    return _C.lookup_cpu(t["keys"], t["table_start"], t["offsets"], codes, t["bucket_sum"], t["bucket_sqnorm"],
                         t["n_items"], q, qk, _engine.MODES[mode], 1e10, 0, True, directory)


def _tables_with_keys(rng, keys, r):
    """Tables over explicit keys (b, n) with random codes: the directory only depends on the keys."""
    b, n = keys.shape
    codes = rng.random((b, n, r)).astype(np.float32)
    ids = np.broadcast_to(np.arange(n, dtype=np.int64), (b, n)).copy()
    return _engine.build_tables(keys.astype(np.uint64), codes, ids, with_stats=True)


def _boundary_keys(r, n, rng):
    """Keys at the directory's slot boundaries (first and last key of a slot), 0 and 2^r - 1."""
    from llsh_index import _C

    top = 2 ** r - 1
    bits = min(r, 16)
    shift = r - bits
    edges = [0, top] + [(s << shift) for s in (1, 2, 2 ** bits - 1)] + [(s << shift) - 1 for s in (1, 2, 2 ** bits - 1)]
    rand = rng.integers(0, 2 ** min(r, 62), n, dtype=np.int64).astype(np.uint64) if r > 1 else rng.integers(0, 2, n).astype(np.uint64)
    return np.array([e for e in edges if 0 <= e <= top] + list(rand[:n]), dtype=np.uint64)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["one-bucket", "all-unique", "r1", "r64", "boundaries", "clustered"])
def test_directory_lookup_equals_plain_binary_search(rng, mode, case):
    b, n, r = 3, 3000, 32
    if case == "one-bucket":
        keys = np.full((b, n), 7, np.uint64)
    elif case == "all-unique":
        keys = np.stack([rng.permutation(n).astype(np.uint64) * 1_000_003 for _ in range(b)])
    elif case == "r1":
        r, keys = 1, rng.integers(0, 2, (b, n)).astype(np.uint64)
    elif case == "r64":
        r, keys = 64, rng.integers(0, 2 ** 63, (b, n), dtype=np.int64).astype(np.uint64) * np.uint64(2)
        keys[:, :5] = np.array([0, 2 ** 64 - 1, 2 ** 48, 2 ** 48 - 1, 2 ** 63], dtype=np.uint64)
    elif case == "boundaries":
        keys = np.stack([_boundary_keys(r, n, rng)[:n] for _ in range(b)])
        n = keys.shape[1]
    else:  # a few crowded slots (trained or clustered data): long searches inside a slot
        keys = (rng.integers(0, 5, (b, n)).astype(np.uint64) << np.uint64(27)) | rng.integers(0, 2 ** 12, (b, n)).astype(np.uint64)
    t = _tables_with_keys(rng, keys, r)
    directory = _engine.directory(t, r)
    if case not in ("one-bucket", "r1"):
        assert directory is not None and directory.shape[0] == b
    # queries: every stored key, keys next to them (mostly absent) and random keys
    stored = keys.T[: n // 2]
    near = stored + np.uint64(1)
    rand = rng.integers(0, 2 ** min(r, 62), (n // 2, b), dtype=np.int64).astype(np.uint64)
    qk = np.ascontiguousarray(np.concatenate([stored, near, rand]))
    if r < 64:
        qk &= np.uint64(2 ** r - 1)
    q = rng.random((len(qk), b, r)).astype(np.float32)
    plain, with_dir = _lookup(t, q, qk, mode, None, r), _lookup(t, q, qk, mode, directory, r)
    for a, c in zip(plain, with_dir):
        np.testing.assert_array_equal(a, c)
    assert (plain[0][: n // 2] < 1e10).all()  # stored keys always hit


def test_directory_of_an_empty_table_and_foreign_key_bits(rng):
    """Hand-made tables: table 1 has no keys; query keys with bits above n_bits (only reachable
    through the native call) miss instead of reading outside the directory."""
    from llsh_index import _C

    r = 8
    keys = np.array([1, 5, 9, 200, 255], np.uint64)
    t = {"keys": keys, "table_start": np.array([0, 5, 5], np.int64), "offsets": np.arange(6, dtype=np.int64),
         "codes": rng.random((10, r)).astype(np.float32), "bucket_sum": None, "bucket_sqnorm": None, "n_items": 5}
    directory = _C.build_directory_cpu(keys, t["table_start"], r)
    assert directory.shape == (2, 5) and (directory[1] == 5).all()
    qk = np.array([[1, 1], [255, 9], [256, 5], [2 ** 63 + 5, 0], [4, 255]], np.uint64)
    q = rng.random((5, 2, r)).astype(np.float32)
    plain, with_dir = _lookup(t, q, qk, "mean", None, r), _lookup(t, q, qk, "mean", directory, r)
    for a, c in zip(plain, with_dir):
        np.testing.assert_array_equal(a, c)
    assert (with_dir[0][:, 1] == 1e10).all() and list(with_dir[0][:, 0] < 1e10) == [True, True, False, False, False]


def test_directory_is_cached_per_keys_array_and_never_saved(rng, tmp_path):
    from llsh_index import LearnableLSHIndex

    x = rng.standard_normal((5000, 16)).astype(np.float32)
    index = LearnableLSHIndex(n_tables=2, n_bits=16).add(x)
    t = index._tables
    d = _engine.directory(t, 16)
    most = int(np.diff(t["table_start"]).max())
    assert d is _engine.directory(t, 16) and d.shape == (2, 2 ** int(np.log2(most)) + 1)  # ~1 key a slot
    index.save(tmp_path / "i.llsh")
    loaded = LearnableLSHIndex.load(tmp_path / "i.llsh")
    assert "directory" not in loaded._tables and not any("dir" in k for k in t)
    np.testing.assert_array_equal(loaded.score(x[:100]), index.score(x[:100]))
    # memory_bytes() counts the six layout arrays and the directory actually held beside them
    layout = sum(v.nbytes for k, v in t.items() if isinstance(v, np.ndarray))
    assert index.memory_bytes() == layout + d.nbytes
    assert loaded.memory_bytes() == index.memory_bytes()  # its directory was built by the score() above


# ---------------------------------------------------------------------- instruction sets
@pytest.fixture
def isa_cap():
    from llsh_index import _C

    yield _C.set_isa_cap
    _C.set_isa_cap(2)


@pytest.mark.parametrize("r", [32, 8, 64, 5, 12])
def test_every_instruction_set_gives_identical_distances(rng, isa_cap, r):
    """AVX2, SSE2 and the portable loops compute the same operations in the same order: the
    distances agree bit for bit (and with the oracle), whatever the CPU picks."""
    n, b = 2000, 3
    codes = random_codes(rng, n, b, r, spread=0.3).astype(np.float32)  # few bits set apart: shared buckets
    queries = np.concatenate([codes[:300], random_codes(rng, 300, b, r, spread=0.3).astype(np.float32)])
    results = []
    for level in (2, 1, 0):
        isa_cap(level)
        _, got, visited = run_engine(codes, queries, "mean")
        results.append((got, visited))
    for got, visited in results[1:]:
        np.testing.assert_array_equal(got, results[0][0])
        assert visited == results[0][1]
    expected = oracle.table_distances(oracle.build(codes), queries, "mean", 1e10)
    np.testing.assert_allclose(results[0][0], expected, rtol=1e-5, atol=1e-5)


def test_grouped_and_per_query_lookups_agree(rng):
    """Queries sharing buckets are reduced bucket by bucket for all of them at once; one query at a
    time takes the per-pair path.  The sums are the same, bit for bit."""
    codes = random_codes(rng, 3000, 2, 16, spread=0.2).astype(np.float32)
    keys = _engine.binarize(codes)
    tables = _engine.build_tables(np.ascontiguousarray(keys.T), codes.transpose(1, 0, 2).copy(),
                                  np.broadcast_to(np.arange(3000, dtype=np.int64), (2, 3000)).copy())
    q = codes[:200]
    qk = _engine.binarize(q)
    together, _ = _engine.lookup(tables, q, qk, 0, 1e10)
    alone = np.concatenate([_engine.lookup(tables, q[i:i + 1], qk[i:i + 1], 0, 1e10)[0] for i in range(200)])
    np.testing.assert_array_equal(together, alone)


@pytest.mark.parametrize("dim", [2304, 37, 5])
def test_every_instruction_set_gives_identical_row_moments(rng, isa_cap, dim):
    from llsh_index import _C

    x = (rng.standard_normal((400, dim)) * 3 + 1).astype(np.float32)
    x[4, 2] = np.inf
    outs = []
    for level in (2, 1):
        isa_cap(level)
        outs.append(_C.row_moments_cpu(x, 1e-5))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("width", [(8, 32), (3, 5), (1, 12), (2, 64)])
def test_every_instruction_set_gives_identical_codes_and_keys(rng, isa_cap, width):
    from llsh_index import _C

    b, r = width
    raw = (rng.standard_normal((500, b * r)) * 4).astype(np.float32)
    raw[7, 3] = np.nan
    mean = rng.standard_normal(500).astype(np.float32)
    rstd = rng.uniform(0.5, 2, 500).astype(np.float32)
    wsum = rng.standard_normal(b * r).astype(np.float32)
    outs = []
    for level in (2, 1):
        isa_cap(level)
        codes = raw.copy()
        keys, bad = _C.hash_epilogue_cpu(codes, mean, rstd, wsum, b, True)
        outs.append((codes, keys, bad))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert outs[0][2] == outs[1][2] == 7


def test_native_entry_points_refuse_what_they_cannot_hold():
    """The optional array arguments take ndarrays only (a list was converted into a temporary
    and freed while its pointer was read: wrong distances), and n_bits above 64 (the uint64 keys,
    the lookup's 64-value scratch) is a ValueError at both entry points, not a crash."""
    from llsh_index import _C

    rng = np.random.default_rng(3)
    keys = rng.integers(0, 4, (2, 50)).astype(np.uint64)
    t = _tables_with_keys(rng, keys, 8)
    q = rng.random((5, 2, 8)).astype(np.float32)
    qk = keys[:, :5].T.copy()
    want = _lookup(t, q, qk, "light", None, 8)[0]
    for name in ("bucket_sum", "bucket_sqnorm", "codes"):
        bad = dict(t, **{name: t[name].tolist()})
        with pytest.raises(ValueError, match=f"{name}: expected a NumPy array, got list"):
            _lookup(bad, q, qk, "light", None, 8)
    with pytest.raises(ValueError, match="directory: expected a NumPy array, got list"):
        _lookup(t, q, qk, "light", [[0, 1, 2]], 8)
    np.testing.assert_array_equal(_lookup(t, q, qk, "light", None, 8)[0], want)

    wide = np.zeros((1, 3, 65), np.float32)
    ids = np.arange(3, dtype=np.int64)[None]
    with pytest.raises(ValueError, match="n_bits must be 1..64, got 65"):
        _C.build_tables_cpu(np.zeros((1, 3), np.uint64), wide, ids)
    with pytest.raises(ValueError, match="n_bits must be 1..64, got 65"):
        _C.build_tables_cpu(np.zeros((1, 3), np.uint64), np.zeros((1, 3, 65), np.uint16), ids)  # float16
    one = np.zeros(1, np.uint64)
    with pytest.raises(ValueError, match="n_bits must be 1..64, got 65"):
        _C.lookup_cpu(one, np.array([0, 1]), np.array([0, 3]), np.zeros((3, 65), np.float32), None, None, 3,
                      np.zeros((1, 1, 65), np.float32), np.zeros((1, 1), np.uint64), 0, 1e10, 0, False, None)


@pytest.mark.parametrize("name, edit, msg", [
    ("table_start", lambda t, U: np.array([0, 10 ** 12, 10 ** 12 + 5]), r"table_start: ends at 1000000000005, beyond"),
    ("table_start", lambda t, U: np.array([0, 3, U + 1]), r"table_start: ends at {U1}, beyond the {U} keys"),
    ("table_start", lambda t, U: np.array([0, U, U - 3]), r"table_start: must be non-decreasing, got \d+ then \d+ at "
                                                          r"table 1"),
    ("table_start", lambda t, U: np.array([-5, 3, U]), "table_start: must start at 0, got -5"),
    ("table_start", lambda t, U: np.array([0]), r"table_start: expected n_tables \+ 1 >= 2 entries, got 1"),
    ("offsets", lambda t, U: np.r_[t["offsets"][:-1], t["offsets"][-1] + 10 ** 9],
     r"offsets: end at row \d+, beyond the codes' n_tables \* n_items rows"),
    ("offsets", lambda t, U: np.r_[-(10 ** 9), t["offsets"][1:]], r"offsets: must start at 0, got -1000000000"),
    ("offsets", lambda t, U: t["offsets"][:-1],
     r"tables: inconsistent array sizes \(offsets must have len\(keys\) \+ 1"),
], ids=["ts-far-beyond", "ts-one-beyond", "ts-decreasing", "ts-negative-start", "ts-no-table",
        "offsets-beyond-codes", "offsets-negative-start", "offsets-short"])
def test_lookup_refuses_table_start_and_offsets_outside_the_arrays(rng, name, edit, msg):
    """lookup_cpu read keys[table_start[j] ..] and codes[offsets[u] ..] unchecked: table_start
    [0, 10**12, 10**12 + 5] segfaulted.  Both are now checked (table_start monotone, both within their
    arrays), a ValueError.  The offsets' monotonicity, O(U) per call, is checked where tables come from
    outside: at load (index._check_tables, tests/test_files.py)."""
    keys = rng.integers(0, 32, (2, 60)).astype(np.uint64)
    t = _tables_with_keys(rng, keys, 8)
    U = len(t["keys"])
    q = rng.random((4, 2, 8)).astype(np.float32)
    qk = np.ascontiguousarray(keys[:, :4].T)
    for mode in ("mean", "light"):
        want = _lookup(t, q, qk, mode, None, 8)
        assert (want[0] < 1e10).all()  # control: stored keys hit
        bad = dict(t, **{name: np.ascontiguousarray(edit(t, U), dtype=np.int64)})
        with pytest.raises(ValueError, match=msg.replace("{U1}", str(U + 1)).replace("{U}", str(U))):
            _lookup(bad, q, qk, mode, None, 8)
        again = _lookup(t, q, qk, mode, None, 8)
        np.testing.assert_array_equal(again[0], want[0])
    # the offsets of a statistics-only table are counts only: no codes to stay within
    stats = dict(t, codes=None)
    np.testing.assert_array_equal(_lookup(stats, q, qk, "light", None, 8)[0], _lookup(t, q, qk, "light", None, 8)[0])


def _layout_oracle(keys, codes, ids):
    """The sorted layout of sorted_tables.h in plain NumPy: per table, rows ordered by (key, id)."""
    b, n, r = codes.shape
    out_keys, starts, offsets, out_codes, out_ids = [], [0], [], [], []
    for j in range(b):
        order = np.lexsort((ids[j], keys[j]))
        k = keys[j][order]
        first = np.r_[True, k[1:] != k[:-1]]
        out_keys.append(k[first])
        offsets.append(j * n + np.flatnonzero(first))
        starts.append(starts[-1] + int(first.sum()))
        out_codes.append(codes[j][order])
        out_ids.append(ids[j][order])
    return {"keys": np.concatenate(out_keys), "table_start": np.array(starts),
            "offsets": np.r_[np.concatenate(offsets), b * n], "codes": np.concatenate(out_codes).reshape(b * n, r),
            "ids": np.concatenate(out_ids)}


def _built(rng, n, b, r, ids, dtype=np.float32):
    codes = random_codes(rng, n, b, r, spread=0.5).astype(np.float32)
    keys = np.ascontiguousarray(_engine.binarize(codes).T)
    stored = np.ascontiguousarray(codes.transpose(1, 0, 2).astype(dtype))
    ids = np.broadcast_to(np.asarray(ids, dtype=np.int64), (b, n)).copy()
    return _engine.build_tables(keys, stored.copy(), ids, with_stats=False), keys, stored, ids


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("b,r", [(4, 3), (3, 10), (2, 64)])
@pytest.mark.parametrize("how", ["append", "interleaved", "before"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_merge_tables_equals_the_layout_of_all_rows(rng, dtype, b, r, how, n_threads):
    """merge_tables (add() / merge() on the CPU) against the oracle's sort of both sides' rows: b's
    ids after a's (add), interleaved with them within buckets (the row-by-row merge), or before
    them; small r puts many rows of both sides in one bucket."""
    na, nb = 300, 170
    ids_a = {"append": np.arange(na), "interleaved": 2 * np.arange(na), "before": 1000 + np.arange(na)}[how]
    ids_b = {"append": np.arange(nb), "interleaved": 2 * np.arange(nb) + 1, "before": np.arange(nb)}[how]
    shift = na if how == "append" else 0
    ta, ka, ca, ia = _built(rng, na, b, r, ids_a, dtype)
    tb, kb, cb, ib = _built(rng, nb, b, r, ids_b, dtype)
    got = _engine.merge_tables(ta, tb, b_id_shift=shift, n_threads=n_threads)
    want = _layout_oracle(np.concatenate([ka, kb], 1), np.concatenate([ca, cb], 1),
                          np.concatenate([ia, ib + shift], 1))
    for k in ("keys", "table_start", "offsets", "ids", "codes"):
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert got["codes"].dtype == dtype and got["n_items"] == na + nb and got["bucket_sum"] is None
    # and the merged tables score as one build of every row (statistics derived on demand)
    q = random_codes(rng, 30, b, r, spread=0.5).astype(np.float32)
    qk = _engine.binarize(q)
    plain = _engine.build_tables(np.concatenate([ka, kb], 1), np.ascontiguousarray(np.concatenate([ca, cb], 1)),
                                 np.concatenate([ia, ib + shift], 1))
    for mode in MODES:
        np.testing.assert_array_equal(_engine.lookup(_engine.ensure_statistics(got), q, qk, _engine.MODES[mode], 9.0)[0],
                                      _engine.lookup(plain, q, qk, _engine.MODES[mode], 9.0)[0])


def test_merge_tables_checks_the_layouts(rng):
    """The native merge walks offsets and table starts: a malformed side is a ValueError, not a read
    out of bounds."""
    from llsh_index import _C

    ta = _built(rng, 50, 3, 6, np.arange(50))[0]
    tb = _built(rng, 40, 3, 6, np.arange(40))[0]
    side = lambda t, **kw: dict({k: t[k] for k in ("keys", "table_start", "offsets", "codes", "ids")}, **kw)  # noqa
    ok = _C.merge_tables_cpu(side(ta), side(tb), 50)
    assert len(ok["ids"]) == 3 * 90
    bad_offsets = ta["offsets"].copy()
    bad_offsets[2] = 10 ** 9
    desc = ta["keys"].copy()
    desc[[0, 1]] = desc[[1, 0]]
    start = ta["table_start"].copy()
    start[1] += 1
    other = _built(rng, 40, 2, 6, np.arange(40))[0]
    wide = _built(rng, 40, 3, 7, np.arange(40))[0]
    half = _built(rng, 40, 3, 6, np.arange(40), np.float16)[0]
    cases = [
        (side(ta, offsets=bad_offsets), side(tb), "offsets|buckets"),
        (side(ta, keys=desc), side(tb), "ascending"),
        (side(ta, table_start=start), side(tb), "table j must own rows|ascending|non-empty"),
        (side(ta, ids=ta["ids"][:-1].copy()), side(tb), "ids b \\* n"),
        (side(ta), side(other), "same n_tables and n_bits"),
        (side(ta), side(wide), "same n_tables and n_bits"),
        (side(ta), side(half, codes=half["codes"].view(np.uint16)), "same dtype"),
        (side(ta, codes=ta["codes"].astype(np.float64)), side(tb), "wrong dtype"),
        (side(ta, keys=list(ta["keys"])), side(tb), "expected a NumPy array"),
    ]
    for a, b_, match in cases:
        with pytest.raises(ValueError, match=match):
            _C.merge_tables_cpu(a, b_, 50)


_MERGE_RACES = r'''
import sys, threading, time
import numpy as np
from llsh_index import _C

def side(ids, codes):
    n = len(ids)  # one table, one bucket: interleaved ids make the row-by-row merge (the slow path)
    return {"keys": np.zeros(1, np.uint64), "table_start": np.array([0, 1], np.int64),
            "offsets": np.array([0, n], np.int64), "codes": codes, "ids": ids}

n = int(sys.argv[1])
# 1. another thread drops the dicts' arrays while the merge runs without the GIL
a = side(np.arange(0, 2 * n, 2, dtype=np.int64), np.zeros((n, 1), np.float32))
b = side(np.arange(1, 2 * n, 2, dtype=np.int64), np.ones((n, 1), np.float32))
def drop():
    time.sleep(0.005)
    for t in (a, b):
        for k in list(t):
            t[k] = None
th = threading.Thread(target=drop)
th.start()
out = _C.merge_tables_cpu(a, b, 0, 1)
th.join()
assert np.array_equal(out["ids"], np.arange(2 * n)) and np.array_equal(out["codes"][:, 0], np.arange(2 * n) % 2)

# 2. a mapping that answers a second lookup with another array (n_bits 64 instead of 1)
class Shifty(dict):
    seen = 0
    def __getitem__(self, k):
        if k == "codes":
            Shifty.seen += 1
            if Shifty.seen > 2:
                return np.zeros((2, 64), np.float32)
        return dict.__getitem__(self, k)
m = 200_000
make = lambda: Shifty(side(np.arange(m, dtype=np.int64), np.zeros((m, 1), np.float32)))
out = _C.merge_tables_cpu(make(), make(), m, 1)
assert out["codes"].shape == (2 * m, 1) and np.array_equal(out["ids"], np.arange(2 * m))
print("ok")
'''


def test_merge_tables_holds_what_it_reads(tmp_path):
    """The merge runs without the GIL: another thread replacing the dicts' arrays meanwhile freed
    them under the native reads (a segfault), and an entry looked up twice could differ between the
    checks and the copy.  In a subprocess, so that a crash is a failed test."""
    import subprocess
    import sys

    script = tmp_path / "races.py"
    script.write_text(_MERGE_RACES)
    proc = subprocess.run([sys.executable, str(script), "3000000"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])


def test_merge_tables_refuses_ids_beyond_int64(rng):
    from llsh_index import _C

    ta = _built(rng, 20, 2, 4, np.arange(20))[0]
    tb = _built(rng, 10, 2, 4, np.arange(10))[0]
    side = lambda t: {k: t[k] for k in ("keys", "table_start", "offsets", "codes", "ids")}  # noqa: E731
    top = np.iinfo(np.int64).max
    assert _C.merge_tables_cpu(side(ta), side(tb), top - 9)["ids"].max() == top
    for shift in (top - 8, top):
        with pytest.raises(ValueError, match="ids shifted by b_id_shift must stay within int64"):
            _C.merge_tables_cpu(side(ta), side(tb), shift)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("b,r", [(4, 3), (3, 10), (2, 64)])
@pytest.mark.parametrize("drop", ["oldest", "random", "runs", "none"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_remove_items_equals_the_layout_of_the_kept_rows(rng, dtype, b, r, drop, n_threads):
    """remove_items (remove_ids on the CPU) against the oracle's sort of the kept rows, renumbered
    0.. in order; ids that came interleaved (a merge) keep their relative order."""
    n = 400
    ids = rng.permutation(n)  # tables hold a permutation of 0..n-1 in (key, id) order
    t, keys, codes, ids_b = _built(rng, n, b, r, ids, dtype)
    keep = np.ones(n, bool)
    if drop == "oldest":
        keep[:120] = False
    elif drop == "random":
        keep[rng.choice(n, 170, replace=False)] = False
    elif drop == "runs":
        keep[50:90] = keep[200:201] = keep[300:] = False
    before = {k: t[k].copy() for k in ("keys", "table_start", "offsets", "ids", "codes")}
    got = _engine.remove_items(t, keep, n_threads=n_threads)
    rows = keep[ids]  # the kept rows of the staging arrays, and their new ids
    new_id = np.cumsum(keep) - 1
    want = _layout_oracle(keys[:, rows], codes[:, rows], new_id[ids_b[:, rows]])
    for k in ("keys", "table_start", "offsets", "ids", "codes"):
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert got["codes"].dtype == dtype and got["n_items"] == keep.sum() and got["bucket_sum"] is None
    for k, v in before.items():  # the input tables are left as they were (a score may still read them)
        np.testing.assert_array_equal(t[k], v, err_msg=k)


def test_remove_items_checks_its_input(rng):
    """The native removal reads keep[id]: ids outside the items, a keep of another length or dtype
    are a ValueError, not a read out of bounds."""
    from llsh_index import _C

    t = _built(rng, 60, 3, 6, np.arange(60))[0]
    side = {k: t[k] for k in ("keys", "table_start", "offsets", "codes", "ids")}
    keep = np.ones(60, bool)
    assert len(_C.remove_items_cpu(side, keep)["ids"]) == 3 * 60
    far = t["ids"].copy()
    far[7] = 60
    cases = [
        (dict(side, ids=far), keep, "ids must lie in 0 .. n_items - 1"),
        (dict(side, ids=np.where(far == 60, -1, far)), keep, "ids must lie in 0 .. n_items - 1"),
        (side, keep[:-1], "one value per item"),
        (side, keep.astype(np.uint8), "keep: wrong dtype"),
        (side, keep[::-1], "keep: must be C-contiguous"),
        (dict(side, offsets=np.r_[t["offsets"][:-1], 10 ** 9]), keep, "offsets"),
    ]
    # a table holding an id twice (and missing another) keeps more rows than the output has: refused
    twice = t["ids"].copy()
    twice[:60][twice[:60] == 3] = 4
    cases.append((dict(side, ids=twice), np.r_[np.zeros(4, bool), True, np.zeros(55, bool)], "holds id 4 twice"))
    # ... also where the extra copy and the missing id cancel out in the kept count
    cases.append((dict(side, ids=twice), keep, "holds id 4 twice"))
    for tables, k, match in cases:
        with pytest.raises(ValueError, match=match):
            _C.remove_items_cpu(tables, k)
