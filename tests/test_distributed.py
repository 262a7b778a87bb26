"""Ray shards: scores equal the single-machine index over the concatenated data, gather() equals one add()."""
import numpy as np
import pytest

ray = pytest.importorskip("ray")

import llsh_index  # noqa: E402
from llsh_index import ConfigError, LearnableLSHIndex, _engine  # noqa: E402
from llsh_index.distributed import (DistributedIndex, ShardPool, build_distributed, load_distributed,  # noqa: E402
                                    main)

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


@pytest.mark.parametrize("mode", ["mean", "light", "squared"])
def test_probes_equal_single_index(data, built, mode):
    import ray

    x, q, layers, single = data
    dist = built[3]
    want = single.table_distances(q, mode, n_probes=7)
    assert (want < single.table_distances(q, mode)).any()  # the probes reach other buckets here
    np.testing.assert_allclose(dist.table_distances(q, mode, n_probes=7), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dist.score(q, mode, n_probes=7, query_batch=9), want.min(axis=1), rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(dist.score(ray.put(q), mode, n_probes=7), want.min(axis=1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="n_probes"):
        dist.score(q, mode, n_probes=0)
    # probing on a miss: only the queries that miss every table of every shard are probed again
    want = single.table_distances(q, mode, miss_probes=12)
    assert (want < single.table_distances(q, mode)).any()
    np.testing.assert_allclose(dist.table_distances(q, mode, miss_probes=12, query_batch=9), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dist.score(ray.put(q), mode, miss_probes=12), want.min(axis=1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="miss_probes"):
        dist.score(q, mode, miss_probes=1)
    # the mean over the tables that hit (ours), also from queries already in the object store
    want = single.score(q, mode, reduce="mean")
    assert not np.allclose(want, single.score(q, mode))
    np.testing.assert_allclose(dist.score(q, mode, reduce="mean", query_batch=9), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dist.score(ray.put(q), mode, reduce="mean"), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="reduce"):
        dist.score(q, mode, reduce="max")


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
    loaded = load_distributed(tmp_path / "shards")  # the folder: the files its shards.json lists
    try:
        assert loaded.shard_sizes == [len(a), len(b), len(c)]
        np.testing.assert_allclose(loaded.score(q, "squared"), single.score(q, "squared"), rtol=1e-6, atol=1e-6)
    finally:
        loaded.shutdown()
    import shutil

    from llsh_index import IndexFormatError

    shutil.copy(paths[0], paths[1])  # a folder mixing files: refused before any actor starts
    with pytest.raises(IndexFormatError, match="shard_00001.llsh is not the file shards.json lists"):
        load_distributed(tmp_path / "shards")


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


def test_empty_shards_mixed_settings_and_mean_on_statistics(data, tmp_path):
    """As ShardedIndex: an empty partition is an empty shard (it failed inside the actor), an empty shard
    file loads and scores with the others (NotFittedError from the actor before), shard files of other
    settings are refused at load (they scored, or failed in an actor), 'mean' on statistics-only
    shards is a ConfigError on the driver, and a distributed index with no items a NotFittedError."""
    from llsh_index import NotFittedError, ShardedIndex

    x, q, layers, single = data
    dist = build_distributed(layers, [x[:1200], x[:0], x[1200:]])
    try:
        assert dist.shard_sizes == [1200, 0, 1300]
        np.testing.assert_allclose(dist.score(q), single.score(q), rtol=1e-6, atol=1e-6)
        paths = dist.save_shards(tmp_path / "with_empty")
    finally:
        dist.shutdown()
    loaded = load_distributed(paths)
    try:
        np.testing.assert_allclose(loaded.score(q), ShardedIndex.load(paths).score(q), rtol=1e-6, atol=1e-6)
    finally:
        loaded.shutdown()
    other = layers.empty_like(miss_value=100.0).add(x[:50])
    other.save(str(tmp_path / "other.llsh"))
    layers.empty_like(code_dtype="float16").add(x[:50]).save(str(tmp_path / "half.llsh"))
    for odd in ("other.llsh", "half.llsh"):
        with pytest.raises(ConfigError, match=r"same \(mode, miss_value, store_codes, code_dtype\)"):
            load_distributed([paths[0], str(tmp_path / odd)])
    stats = build_distributed(layers, [x[:100]], mode="light", store_codes=False)
    empty = build_distributed(layers, [x[:0]])
    try:
        with pytest.raises(ConfigError, match="'mean' needs the per-item codes"):
            stats.score(q, mode="mean")
        with pytest.raises(NotFittedError, match="empty"):
            empty.score(q)
    finally:
        stats.shutdown()
        empty.shutdown()


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
    assert main(["--address", "local", "--train", ",".join(parts), "--test", str(tmp_path / "q.npy"),
                 "--out", str(tmp_path / "p"), "--layers", str(tmp_path / "layers.llsh"), "--probes", "3",
                 "--miss-probes", "9", "--reduce", "mean"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), single.score(q, n_probes=3, miss_probes=9, reduce="mean"),  # .npy added, as np.save
                               rtol=1e-6, atol=1e-6)


def test_entry_point_errors_are_one_line(tmp_path, capsys):
    """Missing inputs, an output that is a folder, a file that is not .npy: exit 2 and one error line,
    before any actor starts."""
    np.save(tmp_path / "q.npy", np.zeros((3, 4), np.float32))
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    (tmp_path / "folder.npy").mkdir()
    (tmp_path / "plain").mkdir()
    np.save(tmp_path / "d5.npy", np.zeros((3, 5), np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((3, 4), np.int64))
    q = str(tmp_path / "q.npy")
    s = str(tmp_path / "s.npy")
    cases = [(["--train", str(tmp_path / "nope.npy"), "--test", q, "--out", s], "nope.npy"),
             (["--train", q, "--test", q, "--out", str(tmp_path / "folder.npy")], "folder.npy"),
             (["--train", q, "--test", q, "--out", str(tmp_path / "plain")], "plain: is a folder"),
             (["--train", q, "--test", str(tmp_path / "bad.npy"), "--out", s], "bad.npy"),
             (["--train", q, "--test", q, "--out", s, "--layers", str(tmp_path / "no.llsh")],
              "--layers: expected a .llsh index file, not found"),
             # the workers' errors came back as a multi-line Ray traceback that did not name the file
             (["--train", f"{q},{tmp_path / 'd5.npy'}", "--test", q, "--out", s], "d5.npy': 5"),
             (["--train", str(tmp_path / "ints.npy"), "--test", q, "--out", s], "ints.npy: expected a 2-D float array"),
             (["--train", str(tmp_path / "bad.npy"), "--test", q, "--out", s], "--train"),
             (["--train", str(tmp_path / "d5.npy"), "--test", q, "--out", s], "--test")]
    for argv, named in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and named in err, err
    assert not (tmp_path / "s.npy").exists() and not (tmp_path / "plain.npy").exists()
    with pytest.raises(SystemExit):
        main(["--train", q, "--test", q, "--out", str(tmp_path / "s.npy"), "--probes", "0"])


@pytest.fixture
def cli_files(tmp_path, monkeypatch):
    """Small inputs for the entry point's argument checks, and a `_ray` that fails the test: the
    checks come before Ray (and the build) is reached."""
    import llsh_index.distributed as distributed

    def no_ray():
        raise AssertionError("Ray was reached before the arguments were checked")

    monkeypatch.setattr(distributed, "_ray", no_ray)
    np.save(tmp_path / "q.npy", np.zeros((3, 4), np.float32))
    np.save(tmp_path / "q1.npy", np.zeros(4, np.float32))
    np.savez(tmp_path / "q.npz", x=np.zeros((3, 4), np.float32))
    (tmp_path / "file").write_bytes(b"x")
    LearnableLSHIndex(6, n_tables=2, n_bits=4).save(str(tmp_path / "d6.llsh"))
    LearnableLSHIndex(4, n_tables=2, n_bits=4).save(str(tmp_path / "d4.llsh"))
    LearnableLSHIndex(4, n_tables=2, n_bits=4, mode="light", store_codes=False).save(str(tmp_path / "light.llsh"))
    return tmp_path


BASE = ["--train", "{d}/q.npy", "--test", "{d}/q.npy", "--out", "{d}/s.npy"]


@pytest.mark.parametrize("argv, named", [
    # np.load gives an NpzFile: AttributeError 'ndim'
    (["--train", "{d}/q.npy", "--test", "{d}/q.npz", "--out", "{d}/s.npy"],
     "--test {d}/q.npz: expected a .npy array, got an .npz archive"),
    (["--train", "{d}/q.npz", "--test", "{d}/q.npy", "--out", "{d}/s.npy"], "--train {d}/q.npz: expected a .npy array"),
    # FileExistsError after the build
    (BASE + ["--save-shards", "{d}/file"], "{d}/file exists and is not a folder"),
    (BASE + ["--save-shards", "{d}/file/sub"], "a part of that path is a file ({d}/file)"),
    # a remote traceback after the build; IndexFormatError not naming the option, after Ray started
    (BASE + ["--layers", "{d}/d6.llsh"], "dimension 4, got layers of dimension 6"),
    (BASE + ["--layers", "{d}/q.npy"], "--layers {d}/q.npy: not an llsh_index file"),
    # ConfigError / InvalidInputError only after the build
    (BASE + ["--miss-probes", "1"], "--miss-probes: expected 0 (off) or more than --probes (1), got 1"),
    (["--train", "{d}/q.npy", "--test", "{d}/q1.npy", "--out", "{d}/s.npy"], "q1.npy: expected a 2-D array"),
    # silently ignored: the file's layers were used
    (BASE + ["--layers", "{d}/d4.llsh", "--n-tables", "4"], "--n-tables 4 does not match --layers"),
    (BASE + ["--layers", "{d}/d4.llsh", "--n-bits", "7"], "--n-bits 7 does not match --layers"),
    (BASE + ["--layers", "{d}/d4.llsh", "--seed", "3"], "--seed 3: the hash layers come from --layers"),
])
def test_entry_point_checks_before_ray(cli_files, capsys, argv, named):
    d = str(cli_files)
    assert main([s.format(d=d) for s in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and named.format(d=d) in err, err
    assert not (cli_files / "s.npy").exists() and not (cli_files / "file").is_dir()


@pytest.mark.parametrize("extra, want", [
    (["--layers", "{d}/d4.llsh", "--n-tables", "2", "--n-bits", "4"], (2, 4, "mean", True, 0)),  # the layers' own
    (["--n-bits", "7"], (8, 7, "mean", True, 0)),  # untrained: the defaults for the rest
    # mean on statistics-only layers keeps the codes (ConfigError from build_distributed, after Ray started)
    (["--layers", "{d}/light.llsh", "--mode", "mean"], (2, 4, "mean", True, 0)),
])
def test_entry_point_layers_agreeing_options(cli_files, monkeypatch, extra, want):
    import llsh_index.distributed as distributed

    seen, layers_from_args = [], distributed._layers_from_args
    monkeypatch.setattr(distributed, "_layers_from_args", lambda a, dim: seen.append(layers_from_args(a, dim)) or seen[-1])
    with pytest.raises(AssertionError, match="Ray was reached"):
        main([s.format(d=cli_files) for s in BASE + extra])
    (layers,) = seen
    assert (layers.n_tables, layers.n_bits, layers.mode, layers.store_codes, layers.seed) == want


def test_entry_point_address_without_cluster(tmp_path, capsys, monkeypatch):
    """--address auto with no running cluster: Ray raises the built-in ConnectionError, which was a traceback."""
    np.save(tmp_path / "q.npy", np.zeros((3, 4), np.float32))

    def no_cluster(*_, **__):  # Ray's own error and words (ray/_private/services.py)
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to by "
                              "setting `--address` flag or `RAY_ADDRESS` environment variable.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    q = str(tmp_path / "q.npy")
    assert main(["--address", "auto", "--train", q, "--test", q, "--out", str(tmp_path / "s.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --address auto: ") and err.count("\n") == 1 and "Could not find" in err, err


def test_entry_point_address_with_nothing_listening(tmp_path, capsys, monkeypatch):
    """A host:port with nothing listening: ray.init waited minutes on its own timeouts; the address is
    now refused at once, naming it, before ray.init is called."""
    import socket
    import time

    np.save(tmp_path / "q.npy", np.zeros((3, 4), np.float32))
    with socket.socket() as s:  # a port nobody listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    called = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: called.append(a or k))
    q = str(tmp_path / "q.npy")
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        t0 = time.perf_counter()
        assert main(["--address", address, "--train", q, "--test", q, "--out", str(tmp_path / "s.npy")]) == 2
        assert time.perf_counter() - t0 < 10
        err = capsys.readouterr().err
        assert err.startswith(f"error: --address {address}: expected a running Ray cluster there") and \
            f"no connection to 127.0.0.1:{port} within 5 s" in err and err.count("\n") == 1, err
    assert not called and not (tmp_path / "s.npy").exists()
    with socket.socket() as s:  # something listening: the check passes and ray.init is called
        s.bind(("127.0.0.1", 0))
        s.listen()
        from llsh_index.distributed import _check_reachable

        _check_reachable(f"127.0.0.1:{s.getsockname()[1]}")
        _check_reachable("auto")
        _check_reachable("local")
    from llsh_index import ConfigError

    for port in ("0", "70000", "99999999999999999999"):  # an OverflowError traceback before
        with pytest.raises(ConfigError, match=f"expected a port 1..65535, got {port}"):
            _check_reachable(f"127.0.0.1:{port}")


def test_entry_point_help_states_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "within 5 s (default local)" in out and "(default 120; 0: no limit)" in out, out


def test_save_shards_refuses_a_file_and_drops_stale_shards(built, tmp_path):
    """As ShardedIndex.save_shards: WritePathError for a file (FileExistsError before), and a smaller
    save over a larger one leaves no shard of the old one (ShardedIndex.load(folder) read it too)."""
    from llsh_index import ShardedIndex, WritePathError

    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(WritePathError, match="exists and is not a folder"):
        built[2].save_shards(tmp_path / "file")
    built[3].save_shards(tmp_path / "s")
    assert len(built[2].save_shards(tmp_path / "s")) == 2
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["shard_00000.llsh", "shard_00001.llsh", "shards.json"]
    assert ShardedIndex.load(str(tmp_path / "s")).ntotal == built[2].ntotal


def test_shards_receive_codes_hashed_once(data, built, monkeypatch):
    """The driver hashes each round of queries once; the shards get (M, b, r) float32 codes and
    (M, b) uint64 keys, never the (M, d) features."""
    x, q, layers, single = data
    dist = built[2]
    seen = []
    submit = DistributedIndex._submit

    def record(self, codes, keys, mode):
        if isinstance(codes, ray.ObjectRef):
            seen.append(("ObjectRef",))
        else:
            seen.append((codes.dtype, codes.shape, keys.dtype, keys.shape))
        return submit(self, codes, keys, mode)

    monkeypatch.setattr(DistributedIndex, "_submit", record)
    for mode in ("mean", "light"):
        np.testing.assert_allclose(dist.score(q, mode, query_batch=40), single.score(q, mode), rtol=1e-6, atol=1e-6)
    rounds = [(np.float32, (m, 4, 10), np.uint64, (m, 4)) for m in (40, 40, 20)]
    assert seen == rounds * 2
    # queries already in the object store are hashed by a worker: the driver never fetches them
    seen.clear()
    np.testing.assert_allclose(dist.score(ray.put(q), "light"), single.score(q, "light"), rtol=1e-6, atol=1e-6)
    assert len(seen) == 1 and seen[0][0] == "ObjectRef"


def test_pool_reuses_warm_actors(data, tmp_path):
    x, q, layers, single = data
    with ShardPool(3, num_cpus_per_shard=0.5) as pool:  # fits 2 CPUs (num_cpus_per_shard=1 does not)
        ids = {h._actor_id for h in pool._actors}
        assert pool.size == 3 and pool.n_free == 3
        a = build_distributed(layers, np.split(x, CUTS[2]), pool=pool)
        assert pool.n_free == 1 and {h._actor_id for h in a._actors} <= ids
        with pytest.raises(ConfigError, match=r"at most 1 shards \(1 of the pool's 3 actors are free\), got 3"):
            build_distributed(layers, np.split(x, CUTS[3]), pool=pool)
        assert pool.n_free == 1
        np.testing.assert_allclose(a.score(q), single.score(q), rtol=1e-6, atol=1e-6)
        paths = a.save_shards(tmp_path / "shards")
        a.shutdown()  # back to the pool, not killed
        assert pool.n_free == 3
        with pytest.raises(ConfigError, match="shut down"):
            a.score(q)
        b = build_distributed(layers, np.split(x, CUTS[3]), pool=pool, mode="squared", store_codes=False)
        assert {h._actor_id for h in b._actors} == ids  # the same processes, a new shard each
        np.testing.assert_allclose(b.score(q), single.score(q, "squared"), rtol=1e-6, atol=1e-6)
        b.shutdown()
        c = load_distributed(paths, pool=pool)
        np.testing.assert_allclose(c.score(q, "light"), single.score(q, "light"), rtol=1e-6, atol=1e-6)
        c.shutdown()
        # a failed build hands its actors back
        with pytest.raises(Exception, match="missing.npy"):
            build_distributed(layers, [str(tmp_path / "missing.npy"), x[:10]], pool=pool)
        assert pool.n_free == 3
        with pytest.raises(ConfigError, match="with a pool, expected no n_threads, resources"):
            build_distributed(layers, [x], pool=pool, n_threads=1, resources={"CPU": 1})
        with pytest.raises(ConfigError, match="pool expected a ShardPool, got str"):
            build_distributed(layers, [x], pool="warm")
    assert pool.size == 0
    with pytest.raises(ConfigError, match="the ShardPool is shut down"):
        build_distributed(layers, [x], pool=pool)
    with pytest.raises(ConfigError, match="size expected an integer >= 1, got 0"):
        ShardPool(0)


def test_bad_queries_fail_on_the_driver(built):
    from llsh_index import InvalidInputError

    dist = built[2]
    with pytest.raises(InvalidInputError, match="expected dimension 24, got shape \\(3, 5\\)"):
        dist.score(np.zeros((3, 5), np.float32))
    with pytest.raises(InvalidInputError, match="at least one row"):
        dist.score(np.zeros((0, 24), np.float32))
    with pytest.raises(ConfigError, match="query_batch: expected >= 1, got 0"):
        dist.score(np.zeros((3, 24), np.float32), query_batch=0)
    # not arrays: typed on the driver (IndexError before), and query_batch an integer (2.5 was truncated)
    for bad, error, message in ((None, llsh_index.InvalidDTypeError, "float"), ("abc", llsh_index.InvalidDTypeError, "float"),
                                (np.float32(1), InvalidInputError, "2-D")):
        with pytest.raises(error, match=message):
            dist.score(bad)
    for batch in (2.5, "x", True):
        with pytest.raises(ConfigError, match="query_batch: expected an integer"):
            dist.score(np.zeros((3, 24), np.float32), query_batch=batch)


def test_build_and_load_arguments_are_checked(data, built, tmp_path):
    """One path is one shard file (it was iterated by character); non-index layers, missing
    partitions and unfitted layers are typed."""
    from llsh_index.distributed import build_distributed, load_distributed

    x = data[0]
    dist = built[2]
    path = dist.save_shards(tmp_path / "s")[0]
    one = load_distributed(path)
    try:
        assert one.n_shards == 1
    finally:
        one.shutdown()
    for args, error, message in ((("x", [x]), ConfigError, "LearnableLSHIndex as layers, got str"),
                                 ((LearnableLSHIndex(24), None), ConfigError, "list of partitions, got NoneType"),
                                 ((LearnableLSHIndex(), [x]), llsh_index.NotFittedError, "no hash layers")):
        with pytest.raises(error, match=message):
            build_distributed(*args)
    with pytest.raises(ConfigError, match="list of shard files, got NoneType"):
        load_distributed(None)


def _cluster(resource):
    return f"{ray.cluster_resources().get(resource, 0):g}"


def test_request_beyond_the_cluster_raises_at_once(data, built, tmp_path):
    """Ray would queue actors the cluster cannot hold forever (the pool's ready() never returned):
    the request is compared with the cluster's totals first."""
    import time

    x, _, layers, _ = data
    paths = built[2].save_shards(tmp_path / "s")
    cpus = ray.cluster_resources()["CPU"]
    n = int(cpus) + 2
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"ShardPool: {n} shards x \(1 CPU\) ask for {n} CPU in all, but the Ray "
                                          rf"cluster has {_cluster('CPU')} CPU in total .* num_cpus_per_shard \("
                                          rf"fractions are allowed: {np.floor(cpus / n * 100) / 100:g} fits {n} shards"
                                          rf"\) or at most {int(cpus)} shards.*check_resources=False"):
        ShardPool(n, num_cpus_per_shard=1)
    with pytest.raises(ConfigError, match=rf"build_distributed: 1 shards x \({cpus + 1:g} CPU\) ask for {cpus + 1:g} "
                                          rf"CPU in all, but the Ray cluster has {_cluster('CPU')} CPU in total"):
        build_distributed(layers, [x], num_cpus_per_shard=cpus + 1)
    # a custom resource the cluster lacks (held with Ray's 1 CPU per actor given resources)
    with pytest.raises(ConfigError, match=rf"load_distributed: 2 shards x \(1 CPU, 0.5 accel\) ask for 2 CPU, 1 accel "
                                          rf"in all, but the Ray cluster has {_cluster('CPU')} CPU, "
                                          rf"{_cluster('accel')} accel in total.*no accel \(no node has any\)"):
        load_distributed(paths, resources={"accel": 0.5})
    with pytest.raises(ConfigError, match="resources expected custom resources only, got 'GPU'"):
        ShardPool(1, resources={"GPU": 1})
    with pytest.raises(ConfigError, match="num_cpus_per_shard expected a number >= 0"):
        ShardPool(1, num_cpus_per_shard=-1)
    assert time.perf_counter() - t0 < 10


def test_actors_not_started_in_time_raise(data):
    """Past the check (an autoscaler may add nodes), a bounded wait: the pending actors are named and ended."""
    import time

    x, _, layers, _ = data
    cpus = ray.cluster_resources()["CPU"]
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"build_distributed: 1 of 1 shard actors not started after 0.5 s \(each "
                                          rf"holds {cpus + 1:g} CPU, more than the cluster's live nodes can hold: "
                                          rf"it must grow\); the Ray cluster has {cpus:g} CPU in total"):
        build_distributed(layers, [x], num_cpus_per_shard=cpus + 1, check_resources=False, ready_timeout=0.5)
    assert time.perf_counter() - t0 < 10
    with pytest.raises(ConfigError, match="ready_timeout expected seconds > 0 or None, got 0"):
        ShardPool(1, ready_timeout=0)
