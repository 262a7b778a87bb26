"""Mergeable shards: merged tables equal one add(), partial sums combine to the single-index scores."""
import numpy as np
import pytest

from llsh_index import ConfigError, LearnableLSHIndex
from test_reduce import mean_over_hits


def shards_of(x, cuts, **kw):
    base = LearnableLSHIndex(x.shape[1], n_tables=4, n_bits=10, seed=5, **kw)
    out = []
    for part in np.split(x, cuts):
        s = base.empty_like()
        out.append(s.add(part))
    return base, out


@pytest.fixture
def data(rng):
    centres = rng.standard_normal((6, 24)) * 2
    x = (centres[rng.integers(0, 6, 2500)] + 0.4 * rng.standard_normal((2500, 24))).astype(np.float32)
    q = np.concatenate([x[:50], (rng.standard_normal((50, 24)) * 3).astype(np.float32)])
    return x, q


def test_merge_equals_one_add(data):
    x, q = data
    base, shards = shards_of(x, [900, 901, 2000])
    merged = LearnableLSHIndex.merge_all(shards)
    single = LearnableLSHIndex.merge_all([base]).add(x)
    for k in ("keys", "table_start", "offsets", "ids", "codes", "bucket_sum", "bucket_sqnorm"):
        np.testing.assert_array_equal(merged._tables[k], single._tables[k], err_msg=k)
    np.testing.assert_array_equal(merged.score(q), single.score(q))


@pytest.mark.parametrize("code_dtype", ["float32", "float16"])
@pytest.mark.parametrize("n_shards", [3, 5, 8])
def test_merge_all_of_many_shards_equals_one_add(data, code_dtype, n_shards):
    """merge_all (and gather, and `llsh-index merge`) merges many shards pairwise, level by level:
    with an odd count, empty shards among them, and into an index that holds items already, the
    tables are those of one add() of every row, bit for bit."""
    x, q = data
    cuts = np.linspace(0, len(x), n_shards + 1).astype(int)[1:-1]
    cuts[0] = 0  # the first shard empty
    base = LearnableLSHIndex(x.shape[1], n_tables=4, n_bits=10, seed=5, code_dtype=code_dtype)
    base.add(x[:1])  # the layers; then an empty copy per shard
    shards = []
    for part in np.split(x, cuts):
        s = base.empty_like()
        shards.append(s.add(part) if len(part) else s)
    single = base.empty_like().add(x)
    merged = LearnableLSHIndex.merge_all(shards)
    grown = base.empty_like().add(x[:cuts[1]])._merge_many(shards[2:])
    # in turn, an index in its own list merges itself as grown by then
    again = base.empty_like().add(x[:cuts[1]])
    want = again.empty_like().add(x[:cuts[1]])
    for s_ in shards[2:]:
        want.merge(s_)
    want.merge(want)
    again._merge_many(shards[2:] + [again])
    for k in ("keys", "table_start", "offsets", "ids", "codes"):
        np.testing.assert_array_equal(again._tables[k], want._tables[k], err_msg=k)
    for got in (merged, grown):
        assert got.ntotal == len(x)
        for k in ("keys", "table_start", "offsets", "ids", "codes"):
            np.testing.assert_array_equal(got._tables[k], single._tables[k], err_msg=k)
        np.testing.assert_array_equal(got.score(q), single.score(q))
        np.testing.assert_array_equal(got.score(q, "light"), single.score(q, "light"))


@pytest.mark.parametrize("mode", ["mean", "light", "squared"])
def test_partial_scores_combine_exactly(data, mode):
    x, q = data
    base, shards = shards_of(x, [1200, 1900])
    single = LearnableLSHIndex.merge_all([base]).add(x)
    parts = [s.partial_scores(q, mode) for s in shards]
    combined = single.combine_partial_scores(parts, return_distances=True)
    np.testing.assert_allclose(combined, single.table_distances(q, mode), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(single.combine_partial_scores(parts), single.score(q, mode), rtol=1e-6, atol=1e-6)
    # a (query, table) answered by exactly one shard, and a miss everywhere, both occur
    hits = np.stack([p["count"] > 0 for p in parts])
    assert np.any(hits.sum(axis=0) == 1) and np.any(hits.sum(axis=0) == 0)
    # miss_value=inf marks the misses (as probing takes table distances); reduce="mean" as score()
    hit = hits.any(axis=0)  # some shard has the bucket
    want = np.where(hit, single.table_distances(q, mode), np.inf)
    got = single.combine_partial_scores(parts, return_distances=True, miss_value=np.inf)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert (np.isinf(got) == ~hit).all()
    miss = single.default_miss_value(mode)
    mean = single.combine_partial_scores(parts, reduce="mean")
    np.testing.assert_allclose(mean, mean_over_hits(want, miss), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mean, single.score(q, mode, reduce="mean"), rtol=1e-6, atol=1e-6)
    assert (~hit.any(axis=1)).any() and (mean[~hit.any(axis=1)] == np.float32(miss)).all()
    # return_distances ignores reduce: the table distances, misses at the miss value
    np.testing.assert_array_equal(single.combine_partial_scores(parts, return_distances=True, reduce="mean"),
                                  combined)


@pytest.mark.parametrize("kw", [dict(reduce="max"), dict(reduce=None), dict(miss_value=float("nan")),
                                dict(miss_value=-np.inf), dict(miss_value=-1.0), dict(miss_value=1e39), dict(miss_value="1"),
                                dict(miss_value=True)])
def test_combine_partial_scores_bad_reduce_or_miss_value(data, kw):
    x, q = data
    base, shards = shards_of(x, [1200])
    with pytest.raises(ConfigError, match=next(iter(kw))):
        shards[0].combine_partial_scores([shards[0].partial_scores(q)], **kw)


@pytest.mark.parametrize("mode", ["mean", "light"])
def test_partial_scores_of_another_table_or_bit_count_are_refused(data, mode):
    """Parts cut to 2 of the 4 tables combined into scores over those 2 (the min over fewer tables),
    and keys with bits above n_bits made every query miss: both silently."""
    import torch

    from llsh_index import InvalidInputError

    x, q = data
    _, shards = shards_of(x, [1200])
    s = shards[0]
    p = s.partial_scores(q, mode=mode)
    cut = dict(p, count=p["count"][:, :2], sum=p["sum"][:, :2])
    with pytest.raises(InvalidInputError, match=r"expected count \(M, 4\) .* got \(100, 2\)"):
        s.combine_partial_scores([cut], query_codes=p.get("query_codes"))
    if mode == "light":
        with pytest.raises(InvalidInputError, match=r"sum \(M, 4, 10\) .* got \(100, 4\) and \(100, 4, 3\)"):
            s.combine_partial_scores([dict(p, sum=p["sum"][:, :, :3])])
    codes, keys = s.hash_queries(q)
    for k in (keys | np.uint64(1 << 40), torch.from_numpy(keys | np.uint64(1 << 63))):
        c = codes if isinstance(k, np.ndarray) else torch.from_numpy(codes)
        with pytest.raises(InvalidInputError, match=r"expected 10-bit keys .* got 400 with higher bits set"):
            s.partial_scores(query_codes=c, query_keys=k, mode=mode)
    # the keys as hash_queries() gives them combine to score()'s values (numpy and torch)
    for c, k in ((codes, keys), (torch.from_numpy(codes), torch.from_numpy(keys))):
        np.testing.assert_allclose(s.combine_partial_scores([s.partial_scores(query_codes=c, query_keys=k, mode=mode)],
                                                            query_codes=codes), s.score(q, mode), rtol=1e-6)

def test_merge_statistics_only(data):
    x, q = data
    base, shards = shards_of(x, [1000], mode="light", store_codes=False)
    merged = LearnableLSHIndex.merge_all(shards)
    single = LearnableLSHIndex.merge_all([base]).add(x)
    np.testing.assert_allclose(merged.score(q, "light"), single.score(q, "light"), rtol=1e-6)


def test_merge_refuses_other_layers(data):
    x, _ = data
    a = LearnableLSHIndex(24, n_tables=4, n_bits=10, seed=1).add(x[:10])
    b = LearnableLSHIndex(24, n_tables=4, n_bits=10, seed=2).add(x[:10])
    with pytest.raises(ConfigError, match="same hash layers"):
        a.merge(b)
    with pytest.raises(ConfigError, match="n_tables"):
        a.merge(LearnableLSHIndex(24, n_tables=2, n_bits=10, seed=1))


def test_merge_refuses_items_of_other_features(data):
    """Indexes whose recorded feature spaces (llsh-index build's) differ hold items of features made
    otherwise: merging them is refused, naming the difference; an index without a record (built from
    arrays) merges with any, and equal records merge."""
    x, _ = data
    space = {"extractor": "efficientnet_lite0", "extractor_version": "3", "T": 16, "s": 1, "clamp": True}
    a = LearnableLSHIndex(24, n_tables=4, n_bits=10, seed=1).add(x[:10])
    b, c, plain = a.empty_like().add(x[10:20]), a.empty_like().add(x[20:30]), a.empty_like().add(x[30:40])
    a.feature_space_, b.feature_space_, c.feature_space_ = dict(space), dict(space, T=8), dict(space)
    with pytest.raises(ConfigError, match=r"merge: expected items of features made alike, got indexes built on "
                                          r"features made otherwise \(T 16 for this index, 8 for the other\)"):
        a.merge(b)
    assert a.ntotal == 10  # nothing merged
    assert a.merge(c).ntotal == 20 and a.merge(plain).ntotal == 30
