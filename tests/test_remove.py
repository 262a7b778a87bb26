"""LearnableLSHIndex.remove_ids: removing items gives the index of the remaining rows.

Checked against the paper's score written in plain NumPy (tests/oracle.py) over the remaining rows,
and against a fresh add() of them (the tables bit for bit, the README's promise)."""
import numpy as np
import pytest
import torch

import oracle
from llsh_index import LearnableLSHIndex
from llsh_index.errors import IndexStateError, InvalidDTypeError, InvalidInputError, NotFittedError

TABLE_ARRAYS = ("keys", "table_start", "offsets", "ids", "codes")


def _host(v):
    if isinstance(v, torch.Tensor):
        return v.view(torch.int64).numpy().view(np.uint64) if v.dtype == torch.uint64 else v.numpy()
    return v


def assert_same_tables(got, want):
    assert got.ntotal == want.ntotal
    for k in TABLE_ARRAYS:
        a, b = _host(got._tables[k]), _host(want._tables[k])
        assert a.dtype == b.dtype, k
        np.testing.assert_array_equal(a, b, err_msg=k)


def oracle_scores(index, rows, queries, mode="mean"):
    """The paper's score of `queries` against an index holding exactly `rows`, in NumPy."""
    w = index.encoder.weight.detach().numpy()
    b, r = index.n_tables, index.n_bits
    codes = oracle.encode(rows, w, b, r)
    stored = codes.astype(np.float16).astype(np.float64) if index.code_dtype == "float16" else codes
    tables = oracle.build(codes, stored)
    return oracle.scores(tables, oracle.encode(queries, w, b, r), mode, index.default_miss_value(mode))


@pytest.fixture
def data(rng):
    # few bits: buckets of many items, so removals shrink buckets as well as empty them
    x = rng.standard_normal((240, 12)).astype(np.float32)
    q = rng.standard_normal((60, 12)).astype(np.float32)
    return x, q


@pytest.mark.parametrize("code_dtype", ["float32", "float16"])
@pytest.mark.parametrize("n_bits", [3, 9, 64])
@pytest.mark.parametrize("which", ["oldest", "random", "every_other", "all_but_one"])
def test_remove_equals_the_index_of_the_remaining_rows(data, rng, code_dtype, n_bits, which):
    x, q = data
    n = len(x)
    ids = {"oldest": np.arange(50), "random": rng.choice(n, 90, replace=False),
           "every_other": np.arange(0, n, 2), "all_but_one": np.delete(np.arange(n), 117)}[which]
    keep = np.ones(n, bool)
    keep[ids] = False
    index = LearnableLSHIndex(12, n_tables=4, n_bits=n_bits, code_dtype=code_dtype, seed=3).add(x)
    assert index.remove_ids(ids) == len(ids)
    fresh = index.empty_like().add(x[keep])
    assert_same_tables(index, fresh)
    got = index.score(q)
    np.testing.assert_allclose(got, oracle_scores(index, x[keep], q), rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(got, fresh.score(q))
    for mode in ("light", "squared"):  # the bucket statistics are derived again from the remaining codes
        np.testing.assert_allclose(index.score(q, mode), oracle_scores(index, x[keep], q, mode), rtol=2e-5,
                                   atol=2e-6)


def test_remove_then_add_keeps_the_row_order(data):
    """A sliding window: forget the oldest rows, add new ones; the same as one add() of the window."""
    x, q = data
    index = LearnableLSHIndex(12, n_tables=3, n_bits=6, seed=1).add(x[:100])
    index.remove_ids(range(40))
    index.add(x[100:160])
    index.remove_ids(np.arange(30))  # ids are renumbered: these are rows 40..69 of x
    want = index.empty_like().add(x[70:160])
    assert_same_tables(index, want)
    np.testing.assert_allclose(index.score(q), oracle_scores(index, x[70:160], q), rtol=2e-5, atol=2e-6)


def test_boolean_mask_duplicates_and_nothing_to_remove(data):
    x, q = data
    index = LearnableLSHIndex(12, n_tables=2, n_bits=5, seed=0).add(x)
    before = {k: _host(index._tables[k]).copy() for k in TABLE_ARRAYS}
    assert index.remove_ids([]) == 0 and index.remove_ids(np.zeros(len(x), bool)) == 0
    for k in TABLE_ARRAYS:
        np.testing.assert_array_equal(_host(index._tables[k]), before[k])
    assert index.remove_ids([5, 5, 7, 5]) == 2  # repeated ids count once
    mask = np.zeros(len(x) - 2, bool)
    mask[[0, 10]] = True
    assert index.remove_ids(mask) == 2
    keep = np.ones(len(x), bool)
    keep[[5, 7, 0, 12]] = False  # after the first removal ids 0 and 10 are rows 0 and 12 of x
    assert_same_tables(index, index.empty_like().add(x[keep]))
    assert index.remove_ids(torch.tensor([0, 1])) == 2


def test_removing_every_item_empties_the_index(data):
    x, q = data
    index = LearnableLSHIndex(12, n_tables=2, n_bits=5, seed=0).add(x)
    assert index.remove_ids(np.arange(len(x))) == len(x)
    assert index.ntotal == 0
    with pytest.raises(NotFittedError):
        index.score(q)
    index.add(x[:10])  # the layers stay: the index fills again
    assert_same_tables(index, index.empty_like().add(x[:10]))


def test_remove_ids_swaps_tables_and_leaves_the_old_ones_intact(data):
    """remove_ids swaps in new tables: a reference taken before (a score in flight) is left intact."""
    x, q = data
    index = LearnableLSHIndex(12, n_tables=2, n_bits=5, seed=0).add(x)
    old = index._tables
    copies = {k: old[k].copy() for k in TABLE_ARRAYS}
    index.remove_ids(np.arange(0, len(x), 3))
    assert index._tables is not old
    for k in TABLE_ARRAYS:
        np.testing.assert_array_equal(old[k], copies[k])


def test_bad_ids_are_refused_with_typed_errors(data):
    x, _ = data
    index = LearnableLSHIndex(12, n_tables=2, n_bits=5, seed=0)
    with pytest.raises(NotFittedError, match="holds no items"):
        index.remove_ids([0])
    assert index.remove_ids([]) == 0
    index.add(x)
    with pytest.raises(InvalidInputError, match=r"0\.\.239 .*got 240"):
        index.remove_ids([3, 240])
    with pytest.raises(InvalidInputError, match="got -1"):
        index.remove_ids([-1])
    with pytest.raises(InvalidDTypeError, match="float64"):
        index.remove_ids(np.array([1.0, 2.0]))
    with pytest.raises(InvalidDTypeError):
        index.remove_ids(["a"])
    with pytest.raises(InvalidInputError, match=r"shape \(2, 2\)"):
        index.remove_ids(np.zeros((2, 2), np.int64))
    with pytest.raises(InvalidInputError, match="one value per item"):
        index.remove_ids(np.zeros(5, bool))
    assert index.ntotal == len(x)  # nothing was removed by a refused call


def test_statistics_only_index_refuses(data):
    x, _ = data
    light = LearnableLSHIndex(12, n_tables=2, n_bits=5, mode="light", store_codes=False, seed=0).add(x)
    with pytest.raises(IndexStateError, match="store_codes=True"):
        light.remove_ids([1])
    assert light.remove_ids([]) == 0 and light.ntotal == len(x)


def test_remove_on_the_device_path(data, monkeypatch):
    """The tensor (GPU) path: tables come back as tensors on the index's device, with statistics."""
    import fake_device

    x, q = data
    ref = LearnableLSHIndex(12, n_tables=3, n_bits=7, seed=2).add(x)
    ref.remove_ids(np.arange(0, len(x), 4))
    fake_device.install(monkeypatch)
    dev = LearnableLSHIndex(12, n_tables=3, n_bits=7, seed=2).add(torch.from_numpy(x))
    assert dev.remove_ids(np.arange(0, len(x), 4)) == len(x) // 4
    assert isinstance(dev._tables["codes"], torch.Tensor) and dev._tables["bucket_sum"] is not None
    assert_same_tables(dev, ref)
    np.testing.assert_allclose(dev.score(torch.from_numpy(q)), ref.score(q), rtol=1e-6)


def test_sharded_remove_equals_one_index(data):
    """ShardedIndex.remove_ids with gather()'s numbering: the shards left hold what one index of
    the remaining rows holds, and a refused call leaves every shard as it was."""
    from llsh_index import ShardedIndex

    x, q = data
    layers = LearnableLSHIndex(12, n_tables=3, n_bits=6, seed=4)
    sharded = ShardedIndex(layers, devices=["cpu"] * 3)
    sharded.add(x)  # 80 rows per shard
    drop = np.r_[0:10, 75:95, 200:240]
    assert sharded.remove_ids(drop) == len(drop)
    keep = np.ones(len(x), bool)
    keep[drop] = False
    assert sharded.shard_sizes == [65, 65, 40]  # rows 0..79 | 80..159 | 160..239
    assert_same_tables(sharded.gather(), layers.empty_like().add(x[keep]))
    np.testing.assert_allclose(sharded.score(q), oracle_scores(layers, x[keep], q), rtol=2e-5, atol=2e-6)
    before = [s._tables for s in sharded.shards]
    with pytest.raises(InvalidInputError):
        sharded.remove_ids([5, len(x[keep])])
    assert [s._tables for s in sharded.shards] == before
    light = ShardedIndex(layers.empty_like(mode="light", store_codes=False), devices=["cpu"] * 2).add(x)
    with pytest.raises(IndexStateError, match="store_codes=True"):
        light.remove_ids([1])


def test_scores_during_removals_see_the_index_before_or_after(data):
    """score() in other threads while remove_ids() runs: each result is the index's scores before
    that removal or after it, never a mix (the tables are swapped whole)."""
    import threading

    x, q = data
    index = LearnableLSHIndex(12, n_tables=4, n_bits=6, seed=2).add(x)
    steps = [np.arange(0, 40), np.arange(0, 30), np.arange(50, 90)]
    states = [index.empty_like().add(x)]
    keep = np.arange(len(x))
    for ids in steps:
        keep = np.delete(keep, ids)
        states.append(index.empty_like().add(x[keep]))
    allowed = [s.score(q) for s in states]
    seen, errors, stop = [], [], threading.Event()

    def reader():
        try:
            while not stop.is_set():
                seen.append(index.score(q))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for ids in steps:
        index.remove_ids(ids)
    stop.set()
    for t in threads:
        t.join()
    assert not errors and seen
    for got in seen:
        assert any(np.array_equal(got, a) for a in allowed)
    np.testing.assert_array_equal(index.score(q), allowed[-1])


def test_remove_ids_on_a_memory_mapped_index(data, tmp_path):
    """A mapped load's read-only codes are read, never written: the new tables are the kept rows',
    and the file is unchanged."""
    x, q = data
    index = LearnableLSHIndex(12, n_tables=3, n_bits=6, seed=1).add(x)
    path = tmp_path / "a.llsh"
    index.save(path)
    raw = path.read_bytes()
    mapped = LearnableLSHIndex.load(path, mmap=True)
    assert mapped.remove_ids(np.arange(0, len(x), 2)) == len(x) // 2
    assert_same_tables(mapped, index.empty_like().add(x[1::2]))
    assert path.read_bytes() == raw
