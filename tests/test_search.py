"""LearnableLSHIndex.search: the k nearest items among the query's LSH candidates, checked against a
brute-force NumPy oracle of its definition (tests/oracle.py's codes and keys)."""
import numpy as np
import pytest
import torch

import oracle
from llsh_index import LearnableLSHIndex
from llsh_index.errors import ConfigError, IndexStateError, InvalidInputError, NotFittedError


def oracle_search(index, rows, queries, k):
    """Items sharing the query's key in some table, at the L2 distance between the whole codes (all
    b*r values, the items' as stored); ascending, ties by id; padded with inf / -1."""
    w = index.encoder.weight.detach().numpy()
    b, r = index.n_tables, index.n_bits
    items = oracle.encode(rows, w, b, r)
    if index.code_dtype == "float16":
        stored = items.astype(np.float16).astype(np.float64)
    else:
        stored = items
    q = oracle.encode(queries, w, b, r)
    dist = np.full((len(q), k), np.inf)
    ids = np.full((len(q), k), -1)
    for i in range(len(q)):
        best = {}
        for t in range(len(items)):
            if any(oracle.key_of(items[t, j]) == oracle.key_of(q[i, j]) for j in range(b)):
                best[t] = np.sqrt(((stored[t] - q[i]) ** 2).sum())
        ranked = sorted(best.items(), key=lambda kv: (kv[1], kv[0]))[:k]
        for c, (t, d) in enumerate(ranked):
            dist[i, c], ids[i, c] = d, t
    return dist, ids


def check(index, rows, queries, k, got=None):
    dist, ids = index.search(queries, k) if got is None else got
    want_d, want_i = oracle_search(index, rows, queries, k)
    assert dist.dtype == np.float32 and ids.dtype == np.int64 and dist.shape == ids.shape == (len(queries), k)
    np.testing.assert_allclose(dist, want_d, rtol=1e-5, atol=1e-6)
    # ids agree except where two candidates are within float32 rounding of each other
    padded = np.where(np.isinf(want_d), 1e30, want_d)  # inf - inf would be NaN
    close = np.abs(np.diff(np.concatenate([padded, np.full((len(queries), 1), 2e30)], 1), axis=1)) < 1e-5
    tie = close | np.roll(close, 1, axis=1)
    assert ((ids == want_i) | tie).all()
    return dist, ids


@pytest.mark.parametrize("code_dtype", ["float32", "float16"])
# (3, 3) and (8, 2): coarse tables whose candidates cover most items take the dense (GEMM) path;
# the others gather each candidate's codes
@pytest.mark.parametrize("n_tables,n_bits", [(1, 4), (4, 6), (3, 12), (3, 3), (8, 2)])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_search_against_the_oracle(rng, code_dtype, n_tables, n_bits, k):
    x = rng.standard_normal((150, 10)).astype(np.float32)
    q = np.concatenate([rng.standard_normal((25, 10)), x[:5] + 0.01 * rng.standard_normal((5, 10))]).astype(np.float32)
    index = LearnableLSHIndex(10, n_tables=n_tables, n_bits=n_bits, code_dtype=code_dtype, seed=4).add(x)
    dist, ids = check(index, x, q, k)
    if code_dtype == "float32":  # a stored row (all distinct here) finds itself at distance 0 first
        d0, i0 = index.search(x[:20], 1)
        np.testing.assert_array_equal(d0[:, 0], 0)
        np.testing.assert_array_equal(i0[:, 0], np.arange(20))


@pytest.mark.parametrize("n_bits", [64, 2])
def test_identical_rows_tie_to_the_smaller_id_whatever_the_batch(rng, n_bits):
    """A static scene stores identical rows: their distances are equal and the smaller ids come first,
    on the dense path (coarse tables, or a query alone) and the gathered one, alone or in a batch."""
    x = rng.standard_normal((30, 12)).astype(np.float32)
    x[20:25] = x[10]
    index = LearnableLSHIndex(12, n_tables=2, n_bits=n_bits, seed=1).add(x)
    batch = np.concatenate([x[10:11], rng.standard_normal((40, 12)).astype(np.float32)])
    for queries in (x[10:11], batch):
        d, i = index.search(queries, 3)
        np.testing.assert_array_equal(i[0], [10, 20, 21])
        np.testing.assert_array_equal(d[0], 0)
    check(index, x, batch, 7)


@pytest.mark.parametrize("n_tables,n_bits,dense", [(3, 3, True), (8, 2, True), (3, 12, False)])
def test_each_path_is_taken_where_expected(rng, monkeypatch, n_tables, n_bits, dense):
    """Coarse tables send every query to the dense path (no per-row candidate pairs), fine ones to
    the gathered path; both against the oracle."""
    import llsh_index.index as index_module

    calls = []
    real = index_module._candidate_rows
    monkeypatch.setattr(index_module, "_candidate_rows", lambda *a: calls.append(1) or real(*a))
    x = rng.standard_normal((150, 10)).astype(np.float32)
    q = rng.standard_normal((30, 10)).astype(np.float32)
    index = LearnableLSHIndex(10, n_tables=n_tables, n_bits=n_bits, seed=4).add(x)
    check(index, x, q, 5)
    assert (not calls) == dense


def test_a_query_has_candidates_exactly_when_the_score_hits_a_table(rng):
    x = rng.standard_normal((300, 12)).astype(np.float32)
    q = rng.standard_normal((80, 12)).astype(np.float32) * 1.5
    index = LearnableLSHIndex(12, n_tables=4, n_bits=14, seed=1).add(x)
    dist, ids = index.search(q, 1)
    hits = ids[:, 0] >= 0
    assert 10 < hits.sum() < 80  # both kinds occur
    np.testing.assert_array_equal(hits, index.score(q) < index.default_miss_value())
    np.testing.assert_array_equal(np.isinf(dist[:, 0]), ~hits)


def test_the_item_rows_map_follows_new_tables(rng):
    """search() keeps each item's rows beside the tables (like the lookup directory): after add() or
    remove_ids() the new tables get their own map, never the old one's."""
    x = rng.standard_normal((200, 8)).astype(np.float32)
    index = LearnableLSHIndex(8, n_tables=3, n_bits=4, seed=5).add(x[:100])
    check(index, x[:100], x[150:170], 5)
    index.add(x[100:])
    check(index, x, x[150:170], 5)
    index.remove_ids(np.arange(0, 200, 3))
    check(index, np.delete(x, np.arange(0, 200, 3), axis=0), x[150:170], 5)


def test_ids_follow_removal_and_padding(rng):
    x = rng.standard_normal((120, 8)).astype(np.float32)
    index = LearnableLSHIndex(8, n_tables=2, n_bits=10, seed=0).add(x)
    index.remove_ids(range(30))
    check(index, x[30:], x[25:45], 3)  # the rows removed are no candidates; ids are the new numbering
    d, i = index.search(x[30:40], 200)  # more than the 90 items: every row is padded
    np.testing.assert_array_equal(i == -1, np.isinf(d))
    assert ((i == -1).sum(axis=1) >= 110).all()
    np.testing.assert_array_equal(i[:, 0], np.arange(10))  # a stored row is its own nearest, at 0
    np.testing.assert_array_equal(d[:, 0], 0)
    finite = np.where(np.isinf(d), 1e30, d)
    assert (np.diff(finite, axis=1) >= 0).all()  # ascending, the padding last


def test_query_chunks_give_the_same_result(rng, monkeypatch):
    import llsh_index.index as index_module

    x = rng.standard_normal((200, 8)).astype(np.float32)
    q = rng.standard_normal((60, 8)).astype(np.float32)
    index = LearnableLSHIndex(8, n_tables=3, n_bits=3, seed=2).add(x)  # large buckets
    whole = index.search(q, 7)
    # 20,000: dense chunks of 8 queries against one block of items; 4,000: the items' codes in four
    # blocks (two GEMM passes: the k-th distance over every block, then the shortlist)
    for budget in (20_000, 4000):
        monkeypatch.setattr(index_module, "_CHUNK_BYTES", budget)
        part = check(index, x, q, 7)
        np.testing.assert_array_equal(whole[0], part[0])
        np.testing.assert_array_equal(whole[1], part[1])


def test_search_on_the_device_path(rng, monkeypatch):
    import fake_device

    x = rng.standard_normal((150, 10)).astype(np.float32)
    q = rng.standard_normal((30, 10)).astype(np.float32)
    ref = LearnableLSHIndex(10, n_tables=3, n_bits=6, seed=3).add(x)
    fake_device.install(monkeypatch)
    dev = LearnableLSHIndex(10, n_tables=3, n_bits=6, seed=3).add(torch.from_numpy(x))
    d, i = dev.search(torch.from_numpy(q), 4)
    assert isinstance(d, torch.Tensor) and isinstance(i, torch.Tensor)
    want = ref.search(q, 4)
    np.testing.assert_allclose(d.numpy(), want[0], rtol=1e-6)
    np.testing.assert_array_equal(i.numpy(), want[1])


def test_search_refuses_what_it_cannot_answer(rng):
    x = rng.standard_normal((50, 8)).astype(np.float32)
    with pytest.raises(NotFittedError):
        LearnableLSHIndex(8).search(x, 1)
    index = LearnableLSHIndex(8, n_tables=2, n_bits=6).add(x)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="k"):
            index.search(x, bad)
    with pytest.raises(InvalidInputError):
        index.search(x[:, :5], 1)
    bad = x[:3].copy()
    bad[1, 2] = np.nan
    with pytest.raises(InvalidInputError):
        index.search(bad, 1)
    light = LearnableLSHIndex(8, n_tables=2, n_bits=6, mode="light", store_codes=False).add(x)
    with pytest.raises(IndexStateError, match="store_codes=True"):
        light.search(x, 1)


def test_search_on_a_memory_mapped_index(rng, tmp_path):
    """A mapped load's read-only codes are viewed, not copied, and give the same neighbours."""
    import warnings

    x = rng.standard_normal((200, 10)).astype(np.float32)
    q = rng.standard_normal((30, 10)).astype(np.float32)
    index = LearnableLSHIndex(10, n_tables=3, n_bits=5, seed=6).add(x)
    index.save(tmp_path / "a.llsh")
    mapped = LearnableLSHIndex.load(tmp_path / "a.llsh", mmap=True)
    assert not mapped._tables["codes"].flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torch warning about the read-only array either
        got = mapped.search(q, 6)
    want = index.search(q, 6)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("k", [1, 4, 300])
def test_sharded_search_equals_one_index(rng, k):
    """ShardedIndex.search: the neighbours one index of every shard's items gives, with gather()'s
    ids; a shard left empty answers nothing."""
    from llsh_index import ShardedIndex

    x = rng.standard_normal((250, 10)).astype(np.float32)
    q = np.concatenate([rng.standard_normal((20, 10)), x[200:210]]).astype(np.float32)
    layers = LearnableLSHIndex(10, n_tables=3, n_bits=5, seed=7)
    sharded = ShardedIndex(layers, devices=["cpu"] * 4)
    sharded.add(x[:100], shard=0)
    sharded.add(x[100:180], shard=2)
    sharded.add(x[180:], shard=3)  # shard 1 stays empty
    got = sharded.search(q, k)
    whole = layers.empty_like().add(np.concatenate([x[:100], x[100:180], x[180:]]))
    want = whole.search(q, k)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    check(whole, x, q, k, got)


def test_memory_bytes_counts_the_item_rows_map(rng):
    x = rng.standard_normal((100, 8)).astype(np.float32)
    index = LearnableLSHIndex(8, n_tables=3, n_bits=6, seed=0).add(x)
    before = index.memory_bytes()
    index.search(x[:5], 2)
    assert index.memory_bytes() == before + 3 * 100 * 8  # one int64 row number per item and table
    light = LearnableLSHIndex(8, n_tables=3, n_bits=6, mode="light", store_codes=False).add(x)
    assert light.memory_bytes() > 0  # no ids, no map: nothing to look up


@pytest.mark.parametrize("n_tables,n_bits,code_dtype", [(16, 1, "float16"), (2, 16, "float32"), (4, 8, "float32")])
def test_identical_rows_at_a_distance_tie_whatever_their_place(rng, n_tables, n_bits, code_dtype):
    """Identical stored rows at a nonzero distance from the query: the smallest id first, alone or
    after other queries (torch's float32 row sums of short rows depended on the row's position)."""
    x = rng.standard_normal((400, 12)).astype(np.float32)
    x[100:140] = x[10]
    index = LearnableLSHIndex(12, n_tables=n_tables, n_bits=n_bits, code_dtype=code_dtype, seed=1).add(x)
    for _ in range(3):
        q = (x[10] + 1e-3 * rng.standard_normal(12)).astype(np.float32)[None]
        d, i = index.search(q, 3)
        np.testing.assert_array_equal(i[0], [10, 100, 101])
        assert d[0, 0] > 0 and d[0, 0] == d[0, 2]
        for extra in (3, 6, 9, 20):
            batch = np.concatenate([x[200:200 + extra] + 0.01, q]).astype(np.float32)
            db, ib = index.search(batch, 3)
            np.testing.assert_array_equal(ib[-1], i[0])
            np.testing.assert_array_equal(db[-1], d[0])
