"""Ray shards: scores equal the single-machine index over the concatenated data, gather() equals one add()."""
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from llsh_index import LearnableLSHIndex, _engine  # noqa: E402
from llsh_index.distributed import build_distributed, load_distributed, main  # noqa: E402

CUTS = {1: [], 2: [1200], 3: [900, 1900]}
TABLE_KEYS = ("keys", "table_start", "offsets", "ids", "codes", "bucket_sum", "bucket_sqnorm")


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1234)
    centres = rng.standard_normal((6, 24)) * 2
    x = (centres[rng.integers(0, 6, 2500)] + 0.4 * rng.standard_normal((2500, 24))).astype(np.float32)
    q = np.concatenate([x[:50], (rng.standard_normal((50, 24)) * 3).astype(np.float32)])
    layers = LearnableLSHIndex(24, n_tables=4, n_bits=10, seed=5)
    single = layers.empty_like().add(x)
    return x, q, layers, single


@pytest.fixture(scope="module")
def built(data):
    x, _, layers, _ = data
    out = {n: build_distributed(layers, np.split(x, CUTS[n])) for n in CUTS}
    yield out
    for d in out.values():
        d.shutdown()


@pytest.mark.parametrize("n_shards", [1, 2, 3])
@pytest.mark.parametrize("mode", ["mean", "light", "squared"])
def test_scores_equal_single_index(data, built, n_shards, mode):
    x, q, layers, single = data
    dist = built[n_shards]
    assert dist.ntotal == len(x) and dist.n_shards == n_shards
    np.testing.assert_allclose(dist.table_distances(q, mode), single.table_distances(q, mode), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dist.score(q, mode), single.score(q, mode), rtol=1e-6, atol=1e-6)
    # several query rounds give the same answer
    np.testing.assert_array_equal(dist.score(q, mode, query_batch=7), dist.score(q, mode))
    if n_shards > 1:  # the queries include a (query, table) found in one shard only, and misses everywhere
        local = [layers.empty_like().add(p) for p in np.split(x, CUTS[n_shards])]
        hits = np.stack([s.partial_scores(q, mode)["count"] > 0 for s in local]).sum(axis=0)
        assert np.any(hits == 1) and np.any(hits == 0)
        assert np.any((hits == 0).all(axis=1))  # a query missing every table of every shard


def assert_same_tables(merged, single):
    """Layout exactly equal; codes and statistics to float32 rounding.  Shards hash in Ray worker
    processes whose BLAS runs with another thread count, and a GEMM's last bit can depend on it."""
    for k in ("keys", "table_start", "offsets", "ids"):
        np.testing.assert_array_equal(merged._tables[k], single._tables[k], err_msg=k)
    for index in (merged, single):  # statistics an index with codes derives on first use
        _engine.ensure_statistics(index._tables)
    for k in ("codes", "bucket_sum", "bucket_sqnorm"):
        if single._tables[k] is not None:
            np.testing.assert_allclose(merged._tables[k], single._tables[k], rtol=1e-6, atol=1e-6, err_msg=k)


def test_gather_equals_one_add(data, built):
    x, q, _, single = data
    for dist in built.values():
        merged = dist.gather()
        assert_same_tables(merged, single)
        np.testing.assert_allclose(merged.score(q), single.score(q), rtol=1e-6, atol=1e-6)


def test_partitions_as_paths_refs_and_callables(data, tmp_path):
    x, q, layers, single = data
    a, b, c = np.split(x, CUTS[3])
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "c.npy", c)
    path_c = str(tmp_path / "c.npy")
    dist = build_distributed(layers, [tmp_path / "a.npy", ray.put(b), lambda: np.load(path_c)])
    try:
        assert dist.shard_sizes == [len(a), len(b), len(c)]
        assert_same_tables(dist.gather(), single)
        np.testing.assert_allclose(dist.score(q), single.score(q), rtol=1e-6, atol=1e-6)
        paths = dist.save_shards(tmp_path / "shards")
    finally:
        dist.shutdown()
    loaded = load_distributed(paths)
    try:
        np.testing.assert_allclose(loaded.score(q, "squared"), single.score(q, "squared"), rtol=1e-6, atol=1e-6)
    finally:
        loaded.shutdown()


def test_statistics_only_shards(data):
    x, q, layers, _ = data
    single = layers.empty_like(mode="light", store_codes=False).add(x)
    dist = build_distributed(layers, np.split(x, CUTS[2]), mode="light", store_codes=False)
    try:
        assert dist.mode == "light"
        for mode in ("light", "squared"):
            np.testing.assert_allclose(dist.score(q, mode), single.score(q, mode), rtol=1e-6, atol=1e-6)
    finally:
        dist.shutdown()


def test_entry_point(data, tmp_path):
    x, q, layers, single = data
    parts = []
    for i, p in enumerate(np.split(x, CUTS[2])):
        parts.append(str(tmp_path / f"p{i}.npy"))
        np.save(parts[-1], p)
    np.save(tmp_path / "q.npy", q)
    layers.save(str(tmp_path / "layers.llsh"))
    assert main(["--address", "local", "--train", ",".join(parts), "--test", str(tmp_path / "q.npy"),
                 "--out", str(tmp_path / "s.npy"), "--layers", str(tmp_path / "layers.llsh")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), single.score(q), rtol=1e-6, atol=1e-6)
