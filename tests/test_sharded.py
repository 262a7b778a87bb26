"""ShardedIndex: shards on the devices of one host give the scores of one index over all their items.

CPU shards are compared with a single index directly (the CPU hashing is bit-identical however
the rows are batched).  The device placement logic (round-robin over the visible GPUs, one thread
per device, queries hashed once and only their codes sent) runs on the CPU through fake devices:
torch CPU tensors behind the CUDA engine's API, as in tests/test_tensor_path.py.  The `gpu` tests
at the end run the same paths on real devices (two shards on one GPU; several GPUs when present).
"""
import contextlib
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import llsh_index.sharded as sharded_mod
from fake_device import FakeDeviceEngine
from llsh_index import (ConfigError, CudaUnavailableError, DeviceMismatchError, InvalidDTypeError, InvalidInputError,
                        LearnableLSHIndex, NotFittedError, ShardedIndex, _engine)

DIM, B, R = 20, 5, 9


def make_data(seed=2027, n=3000, n_queries=120, dim=DIM):
    """Clustered rows; queries near the data (hits, some in one shard only) and far from it (misses)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim)) * 2.5
    x = (centres[rng.integers(0, 8, n)] + 0.45 * rng.standard_normal((n, dim))).astype(np.float32)
    x[100:130] = x[100]  # a bucket of identical rows that lands in the first shard only
    near = x[rng.integers(0, n, n_queries // 2)] + 0.05 * rng.standard_normal((n_queries // 2, dim))
    far = rng.standard_normal((n_queries - n_queries // 2, dim)) * 6
    q = np.concatenate([x[100:102], near[2:], far]).astype(np.float32)
    return x, q


@pytest.fixture(scope="module")
def data():
    x, q = make_data()
    layers = LearnableLSHIndex(DIM, n_tables=B, n_bits=R, seed=11)
    return x, q, layers, layers.empty_like().add(x)


def assert_equal_to(sharded, single, q, modes=("mean", "light", "squared"), **kw):
    for mode in modes:
        np.testing.assert_allclose(sharded.table_distances(q, mode, **kw), single.table_distances(q, mode),
                                   rtol=1e-6, atol=1e-6, err_msg=mode)
        np.testing.assert_allclose(sharded.score(q, mode, **kw), single.score(q, mode), rtol=1e-6, atol=1e-6,
                                   err_msg=mode)


# ------------------------------------------------------------------------------ CPU shards
@pytest.mark.parametrize("n_shards", [1, 2, 3, 5])
def test_cpu_shards_equal_single_index(data, n_shards):
    x, q, layers, single = data
    sh = ShardedIndex(layers, devices=["cpu"], n_shards=n_shards).add(x)
    assert sh.devices == ["cpu"] * n_shards and sh.ntotal == len(x)
    assert max(sh.shard_sizes) - min(sh.shard_sizes) <= 1
    assert_equal_to(sh, single, q)
    assert_equal_to(sh, single, q, query_batch=17)  # several rounds
    if n_shards > 1:  # the edge cases occur: a (query, table) in one shard only, and a query missing everywhere
        codes, keys = single.hash_queries(q)
        hits = np.stack([s.partial_scores(query_codes=codes, query_keys=keys)["count"] > 0 for s in sh.shards])
        assert np.any(hits.sum(axis=0) == 1)
        assert np.any((hits.sum(axis=0) == 0).all(axis=1))


@pytest.mark.parametrize("n_shards", [1, 3])
def test_cpu_shards_with_probes_equal_single_index(data, n_shards):
    x, q, layers, single = data
    sh = ShardedIndex(layers, devices=["cpu"], n_shards=n_shards).add(x)
    for p in (4, 12):
        for mode in ("mean", "light", "squared"):
            want = single.table_distances(q, mode, n_probes=p)
            assert (want < single.table_distances(q, mode)).any()  # the probes reach other buckets here
            for batch in (None, 17):
                np.testing.assert_allclose(sh.table_distances(q, mode, query_batch=batch, n_probes=p), want,
                                           rtol=1e-6, atol=1e-6, err_msg=mode)
            np.testing.assert_allclose(sh.score(q, mode, n_probes=p), want.min(axis=1), rtol=1e-6, atol=1e-6)
    # probing on a miss: only the queries that miss every table of every shard are probed again
    for mode in ("mean", "light", "squared"):
        plain = single.table_distances(q, mode)
        want = single.table_distances(q, mode, miss_probes=12)
        assert (want < plain).any()  # some query missed everywhere and the probes found a bucket
        for batch in (None, 17):
            np.testing.assert_allclose(sh.table_distances(q, mode, query_batch=batch, miss_probes=12), want,
                                       rtol=1e-6, atol=1e-6, err_msg=mode)
        np.testing.assert_allclose(sh.score(q, mode, n_probes=3, miss_probes=12),
                                   single.score(q, mode, n_probes=3, miss_probes=12), rtol=1e-6, atol=1e-6)
        for kw in ({}, {"miss_probes": 12}):  # the mean over the tables that hit (ours)
            np.testing.assert_allclose(sh.score(q, mode, query_batch=17, reduce="mean", **kw),
                                       single.score(q, mode, reduce="mean", **kw), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="n_probes"):
        sh.score(q, n_probes=0)
    with pytest.raises(ConfigError, match="miss_probes"):
        sh.score(q, n_probes=4, miss_probes=4)
    with pytest.raises(ConfigError, match="reduce"):
        sh.score(q, reduce="max")


def test_fake_gpus_with_probes_equal_single_index(data, fake):
    x, q, layers, single = data
    fake(2)
    sh = ShardedIndex(layers, n_shards=3).add(x)
    for mode in ("mean", "light", "squared"):
        np.testing.assert_allclose(sh.table_distances(q, mode, n_probes=6), single.table_distances(q, mode, n_probes=6),
                                   rtol=1e-6, atol=1e-6, err_msg=mode)
        for kw in ({"miss_probes": 12}, {"reduce": "mean"}, {"n_probes": 2, "miss_probes": 12, "reduce": "mean"}):
            np.testing.assert_allclose(sh.score(q, mode, **kw), single.score(q, mode, **kw), rtol=1e-6, atol=1e-6,
                                       err_msg=f"{mode} {kw}")
    sh.close()


def test_statistics_only_shards_and_repeated_adds(data):
    x, q, layers, _ = data
    single = layers.empty_like(mode="light", store_codes=False).add(x)
    sh = ShardedIndex(layers, devices="cpu", n_shards=4, mode="light", store_codes=False)
    sh.add(x[:3])  # fewer rows than shards: one shard stays empty for now
    assert sorted(sh.shard_sizes) == [0, 1, 1, 1]
    sh.add(x[3:1000]).add(x[1000:])
    assert sh.mode == "light" and sh.ntotal == len(x)
    assert_equal_to(sh, single, q, modes=("light", "squared"))
    with pytest.raises(ConfigError, match="store_codes=False"):
        sh.score(q, "mean")


def test_from_shards_refuses_shards_that_would_score_by_their_order(data, tmp_path):
    """The first shard's settings score for all: shards with another miss_value or mode gave scores
    that depended on the order of the list; unfitted shards are named as such."""
    x, q, layers, _ = data
    a = layers.empty_like(miss_value=100.0).add(x[:100])
    b = layers.empty_like().add(x[100:200])
    for shards in ([a, b], [b, a]):
        with pytest.raises(ConfigError, match="same mode and miss_value"):
            ShardedIndex.from_shards(shards, devices="cpu")
    with pytest.raises(ConfigError, match="same mode and miss_value"):
        ShardedIndex.from_shards([b, layers.empty_like(mode="squared").add(x[:5])], devices="cpu")
    from llsh_index import NotFittedError

    with pytest.raises(NotFittedError, match="^from_shards: an index without hash layers"):
        ShardedIndex.from_shards([LearnableLSHIndex(), LearnableLSHIndex()], devices="cpu")


@pytest.mark.parametrize("kw", [dict(devices=["cpu", "cpu"]), dict(devices="cpu", n_shards=3)])
def test_failed_add_adds_nothing_and_names_the_row(data, kw):
    """A bad row in one part leaves every shard as it was (other parts were added before, and a retry
    added them twice), and the error names the row in the caller's array, not in the part."""
    x, q, layers, _ = data
    sh = ShardedIndex(layers, **kw).add(x[:10])
    before = list(sh.shard_sizes)
    want = sh.score(q)
    bad = x[:200].copy()
    bad[199, 0] = np.nan
    with pytest.raises(InvalidInputError, match="row 199"):
        sh.add(bad)
    assert sh.shard_sizes == before
    np.testing.assert_array_equal(sh.score(q), want)
    sh.add(x[10:200])  # the retry, fixed: exactly one index over x[:200]
    np.testing.assert_array_equal(sh.score(q), layers.empty_like().add(x[:200]).score(q))


def test_empty_shard_at_score_time_and_float16_codes(data):
    x, q, layers, _ = data
    tiny = ShardedIndex(layers, devices="cpu", n_shards=3).add(x[:2])
    assert tiny.shard_sizes == [1, 0, 1]  # the empty shard answers nothing: all its counts would be 0
    assert_equal_to(tiny, layers.empty_like().add(x[:2]), np.concatenate([x[:2], q]))
    half = ShardedIndex(LearnableLSHIndex(DIM, n_tables=B, n_bits=R, seed=11, code_dtype="float16"),
                        devices="cpu", n_shards=3).add(x)
    assert half.shards[0]._tables["codes"].dtype == np.float16
    single = LearnableLSHIndex(DIM, n_tables=B, n_bits=R, seed=11, code_dtype="float16").add(x)
    assert_equal_to(half, single, q)


def test_save_shards_leaves_only_this_index_in_the_folder(data, tmp_path):
    """Re-saving a smaller sharded index into a folder removes the earlier save's extra shard files
    (loading the folder's shard files gave more items than the index holds); bad folders are typed."""
    from llsh_index import WritePathError

    x, q, layers, _ = data
    ShardedIndex(layers, devices="cpu", n_shards=3).add(x[:300]).save_shards(tmp_path / "s")
    (tmp_path / "s" / "notes.txt").write_text("not ours")
    small = ShardedIndex(layers, devices="cpu", n_shards=2).add(x[:50])
    paths = small.save_shards(tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["notes.txt", "shard_00000.llsh", "shard_00001.llsh",
                                                                  "shards.json"]
    loaded = ShardedIndex.load(sorted(str(p) for p in (tmp_path / "s").glob("shard_*.llsh")), devices="cpu")
    assert loaded.ntotal == 50 and paths == sorted(paths)
    np.testing.assert_array_equal(loaded.score(q), small.score(q))
    (tmp_path / "file").write_text("x")
    for bad, message in ((tmp_path / "file", "is not a folder"), (None, "expected a folder path")):
        with pytest.raises(WritePathError, match=message):
            small.save_shards(bad)
    # a folder below a file: WritePathError naming the path, as LearnableLSHIndex.save, not NotADirectoryError
    below = tmp_path / "file" / "x"
    with pytest.raises(WritePathError) as info:
        small.save_shards(below)
    assert str(info.value) == (f"save_shards: cannot create the folder {below}: a part of that path is a file "
                               f"({below.parent})")
    with pytest.raises(WritePathError, match="a part of that path is a file"):
        small.save_shards(str(tmp_path / "file" / "x" / "y"))


def test_load_reads_the_folder_save_shards_wrote(data, tmp_path):
    """ShardedIndex.load(folder): the shard files save_shards wrote there, in shard order (not the
    folder given to LearnableLSHIndex.load: 'Is a directory'); an empty or incomplete folder is named."""
    from llsh_index import IndexFileNotFoundError, IndexFormatError

    x, q, layers, single = data
    sh = ShardedIndex.from_shards([layers.empty_like().add(p) for p in np.split(x, [700, 2500])], devices="cpu")
    sh.save_shards(tmp_path / "shards")
    (tmp_path / "shards" / "notes.txt").write_text("not ours")
    for folder in (tmp_path / "shards", str(tmp_path / "shards")):
        loaded = ShardedIndex.load(folder, devices="cpu")
        assert loaded.shard_sizes == [700, 1800, 500]  # in shard order, not by size or listing order
        np.testing.assert_array_equal(loaded.score(q), sh.score(q))
        assert_equal_to(loaded, single, q, modes=("mean",))
    # re-saved smaller: the stale shard files are gone, so the folder loads as the new index
    ShardedIndex(layers, devices="cpu", n_shards=2).add(x[:50]).save_shards(tmp_path / "shards")
    assert ShardedIndex.load(tmp_path / "shards", devices="cpu").shard_sizes == [25, 25]
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFileNotFoundError, match="no shard files in the folder .*empty"):
        ShardedIndex.load(tmp_path / "empty", devices="cpu")
    sh.save_shards(tmp_path / "gap")
    (tmp_path / "gap" / "shard_00001.llsh").unlink()
    with pytest.raises(IndexFormatError, match="shard_00001.llsh is missing"):
        ShardedIndex.load(tmp_path / "gap", devices="cpu")


def test_a_save_stopped_halfway_is_refused_at_load(data, tmp_path, monkeypatch):
    """Each shard file is written atomically, the set was not: a save interrupted after shard 0
    loaded as the new shard 0 beside the old shard 1 (a mixed index, no error). shards.json, written
    last with every file's SHA-256, makes that an IndexFormatError; a folder saved before the list
    existed still loads; a damaged or future list is named."""
    import hashlib
    import json

    from llsh_index import IndexFormatError, LearnableLSHIndex

    x, q, layers, _ = data
    folder = tmp_path / "s"
    old = ShardedIndex(layers, devices="cpu", n_shards=2).add(x[:100])
    old.save_shards(folder)
    body = json.loads((folder / "shards.json").read_text())
    assert body["format"] == "llsh-shards" and body["version"] == 1
    assert [e["file"] for e in body["shards"]] == ["shard_00000.llsh", "shard_00001.llsh"]
    assert body["shards"][1]["sha256"] == hashlib.sha256((folder / "shard_00001.llsh").read_bytes()).hexdigest()
    new = ShardedIndex(layers, devices="cpu", n_shards=2).add(x)
    real_save, calls = LearnableLSHIndex._save, []

    def interrupted(self, path, digest=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_save(self, path, digest)

    monkeypatch.setattr(LearnableLSHIndex, "_save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new.save_shards(folder)
    monkeypatch.setattr(LearnableLSHIndex, "_save", real_save)
    with pytest.raises(IndexFormatError, match=r"shard_00000.llsh is not the file shards.json lists"):
        ShardedIndex.load(folder, devices="cpu")
    # a smaller save stopped after its list, before the stale shards went: the list decides
    new.save_shards(folder)
    three = ShardedIndex(layers, devices="cpu", n_shards=3).add(x[:90])
    three.save_shards(tmp_path / "t")
    monkeypatch.setattr(Path, "unlink", lambda self, *a, **k: None)
    new.save_shards(tmp_path / "t")
    monkeypatch.undo()
    assert (tmp_path / "t" / "shard_00002.llsh").exists()
    loaded = ShardedIndex.load(tmp_path / "t", devices="cpu")
    assert loaded.ntotal == len(x) and loaded.shard_sizes == new.shard_sizes
    np.testing.assert_array_equal(loaded.score(q), new.score(q))
    # written before shards.json existed: every shard_NNNNN.llsh, as before
    (folder / "shards.json").unlink()
    assert ShardedIndex.load(folder, devices="cpu").shard_sizes == new.shard_sizes
    for text, message in (("{", "damaged or not a shard list"), ('{"format": "other"}', "expected format"),
                          ('{"format": "llsh-shards", "version": 9, "shards": []}', "version 9, newer"),
                          ('{"format": "llsh-shards", "version": 1, "shards": [{"file": "../x", "sha256": "0"}]}',
                           "expected 'shards'")):
        (folder / "shards.json").write_text(text)
        with pytest.raises(IndexFormatError, match=message):
            ShardedIndex.load(folder, devices="cpu")


def test_from_shards_save_load_and_gather(data, tmp_path):
    x, q, layers, single = data
    parts = [layers.empty_like().add(p) for p in np.split(x, [700, 2500])]
    sh = ShardedIndex.from_shards(parts, devices=["cpu"])
    assert sh.shard_sizes == [700, 1800, 500]
    assert_equal_to(sh, single, q, modes=("mean",))
    merged = sh.gather()
    for t in (merged._tables, single._tables):  # add()/merge() defer them; derive before comparing
        _engine.ensure_statistics(t)
    for k in ("keys", "table_start", "offsets", "ids", "codes", "bucket_sum", "bucket_sqnorm"):
        np.testing.assert_array_equal(merged._tables[k], single._tables[k], err_msg=k)
    loaded = ShardedIndex.load(sh.save_shards(tmp_path / "shards"))
    assert loaded.shard_sizes == sh.shard_sizes
    np.testing.assert_array_equal(loaded.score(q), sh.score(q))


@pytest.mark.parametrize("mode", ["mean", "light", "squared"])
def test_partial_scores_from_codes_equal_from_features(data, mode):
    x, q, layers, single = data
    codes, keys = single.hash_queries(q)
    a = single.partial_scores(q, mode)
    b = single.partial_scores(mode=mode, query_codes=codes, query_keys=keys)
    np.testing.assert_array_equal(a["count"], b["count"])
    np.testing.assert_array_equal(a["sum"], b["sum"])
    if mode == "light":  # pre-hashed queries: the caller already holds the codes, so none come back
        assert "query_codes" not in b and np.array_equal(a["query_codes"], codes)
    got = single.combine_partial_scores([b], query_codes=codes if mode == "light" else None)
    np.testing.assert_array_equal(got, single.combine_partial_scores([a]))
    # torch CPU tensors are taken too
    c = single.partial_scores(mode=mode, query_codes=torch.from_numpy(codes), query_keys=torch.from_numpy(keys))
    np.testing.assert_array_equal(c["sum"], b["sum"])


# ------------------------------------------------------------------------------ fake devices
class FakeDevices(FakeDeviceEngine):
    """n fake GPUs: the index's tensor path on torch CPU tensors, the C++ engine behind _cuda_engine's
    API; records where shards are placed and what is sent to which device from which thread."""

    def __init__(self, n):
        self.n = n
        self.placed = {}   # id(index) -> device
        self.sent = []     # (device, dtype, shape, thread id)

    def place(self, index, device):
        if index._tables is not None:
            index._tables = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v)
                             for k, v in index._tables.items()}
        self.placed[id(index)] = device
        return index

    def send(self, x, device):
        t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        self.sent.append((device, t.dtype, tuple(t.shape), threading.get_ident()))
        return t

    @staticmethod
    def scope(device):
        return contextlib.nullcontext()


@pytest.mark.parametrize("n_shards", [1, 3, 4000])
def test_stats_and_query_bucket_sizes_are_those_of_one_index(data, n_shards):
    """A key held by several shards is one bucket of their summed sizes: the sharded stats() and
    query_bucket_sizes() equal the single index's (itself checked against the oracle in test_index).
    4000 shards for 3000 rows leaves empty shards; the shared bucket of identical rows spans none."""
    x, q, layers, single = data
    sh = ShardedIndex(layers, devices=["cpu"], n_shards=n_shards).add(x)
    assert sh.stats() == single.stats()
    got = sh.query_bucket_sizes(q)
    np.testing.assert_array_equal(got, single.query_bucket_sizes(q))
    assert (got == 0).any() and (got > 1).any()
    if n_shards == 3:  # buckets split across shards do occur, so the sums are exercised
        per_shard = np.stack([s.query_bucket_sizes(q) for s in sh.shards])
        assert ((per_shard > 0).sum(axis=0) > 1).any()
    with pytest.raises(NotFittedError, match="stats: the index is empty"):
        ShardedIndex(layers, devices=["cpu"], n_shards=2).stats()
    with pytest.raises(InvalidInputError, match="queries"):
        sh.query_bucket_sizes(q[:, :3])


def test_fake_gpu_shards_stats_and_query_bucket_sizes(data, fake):
    x, q, layers, single = data
    fake(2)
    sh = ShardedIndex(layers, n_shards=3).add(x)
    assert isinstance(sh.shards[0]._tables["keys"], torch.Tensor)
    assert sh.stats() == single.stats()
    np.testing.assert_array_equal(sh.query_bucket_sizes(q), single.query_bucket_sizes(q))


@pytest.fixture
def fake(monkeypatch):
    return lambda n: install_fake_gpus(monkeypatch, n)


def install_fake_gpus(monkeypatch, n):
    """n fake GPUs for one test (tests/test_readme.py uses it too): FakeDevices behind the engine and
    the sharded module's device helpers."""
    import llsh_index._cuda_engine as ce

    f = FakeDevices(n)
    monkeypatch.setattr(_engine, "on_device", lambda x: isinstance(x, torch.Tensor))
    for name in ("binarize", "build_tables", "lookup"):
        monkeypatch.setattr(ce, name, getattr(f, name))
    monkeypatch.setattr(sharded_mod, "_visible_gpus", lambda: n)
    monkeypatch.setattr(sharded_mod, "_place", f.place)
    monkeypatch.setattr(sharded_mod, "_send", f.send)
    monkeypatch.setattr(sharded_mod, "_device_scope", f.scope)
    return f


def test_fake_gpus_round_robin_threads_and_codes_only(data, fake, monkeypatch):
    x, q, layers, single = data
    f = fake(3)
    sh = ShardedIndex(layers, n_shards=5)
    assert sh.devices == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert [f.placed[id(s)] for s in sh.shards] == sh.devices
    sh.add(x)
    assert all(isinstance(s._tables["keys"], torch.Tensor) for s in sh.shards)  # the shards' tensor path ran
    # count the hashing done by each index during scoring
    calls = {}
    encode = LearnableLSHIndex._encode_chunk

    def counting(self, x, name, row0, **kw):
        calls[id(self)] = calls.get(id(self), 0) + x.shape[0]
        return encode(self, x, name, row0, **kw)

    want = {mode: single.table_distances(q, mode) for mode in ("mean", "light", "squared")}
    monkeypatch.setattr(LearnableLSHIndex, "_encode_chunk", counting)
    f.sent.clear()
    for mode in ("mean", "light", "squared"):
        np.testing.assert_allclose(sh.table_distances(q, mode, query_batch=50), want[mode], rtol=1e-6, atol=1e-6,
                                   err_msg=mode)
    # hashed once: only the hasher of cuda:0 hashed, every query once per mode; no shard hashed
    assert calls == {id(sh._hashers["cuda:0"]): 3 * len(q)}
    # features went to the hash device only; every device got codes (M, b, r) float32 + keys (M, b) uint64
    feats = [s for s in f.sent if s[2][-1] == DIM and len(s[2]) == 2]
    assert {s[0] for s in feats} == {"cuda:0"} and sum(s[2][0] for s in feats) == 3 * len(q)
    codes = [s for s in f.sent if s[1] == torch.float32 and len(s[2]) == 3]
    keys = [s for s in f.sent if s[1] == torch.uint64]
    assert len(f.sent) == len(feats) + len(codes) + len(keys)
    assert all(s[2][1:] == (B, R) for s in codes) and all(s[2][1] == B for s in keys)
    rounds = 3 * -(-len(q) // 50)
    assert len(codes) == len(keys) == 3 * rounds  # one copy per device per round, not one per shard
    assert {s[0] for s in codes} == {"cuda:0", "cuda:1", "cuda:2"}
    # one thread per device, each device on its own thread, none of them this one
    threads = {d: {s[3] for s in codes if s[0] == d} for d in ("cuda:0", "cuda:1", "cuda:2")}
    assert all(len(t) == 1 for t in threads.values())
    assert len(set().union(*threads.values())) == 3 and threading.get_ident() not in set().union(*threads.values())
    sh.close()


def test_fake_gpus_device_list_and_cpu_fallback(data, fake):
    x, q, layers, single = data
    fake(2)
    sh = ShardedIndex(layers, devices=["cuda:1", "cuda:1", "cpu"], n_shards=4)
    assert sh.devices == ["cuda:1", "cuda:1", "cpu", "cuda:1"]
    sh.add(x)
    assert_equal_to(sh, single, q)
    with pytest.raises(CudaUnavailableError, match="cuda:2 was asked for, but 2"):
        ShardedIndex(layers, devices=["cuda:0", "cuda:2"])
    fake(0)
    assert ShardedIndex(layers).devices == ["cpu"]
    assert ShardedIndex(layers, n_shards=3).devices == ["cpu"] * 3
    with pytest.raises(CudaUnavailableError, match="0 CUDA device"):
        ShardedIndex(layers, devices=["cuda:0"])


def test_fake_device_light_with_64_bit_keys(fake):
    """Light mode on device shards gathers bucket sums by a searchsorted over uint64 keys; r = 64 puts
    keys with the top bit set in every table (their int64 view is negative)."""
    x, q = make_data(seed=7, n=1500, n_queries=60)
    layers = LearnableLSHIndex(DIM, n_tables=3, n_bits=64, seed=3, batch_size=40)  # several chunks per call
    single = layers.empty_like().add(x)
    assert (single._tables["keys"] >= np.uint64(1 << 63)).any()
    fake(2)
    sh = ShardedIndex(layers, n_shards=3).add(x)
    assert_equal_to(sh, single, np.concatenate([x[:30], q]), modes=("light", "squared"))


def test_fake_device_shard_rejects_host_codes(data, fake):
    x, q, layers, _ = data
    fake(1)
    shard = LearnableLSHIndex.merge_all([layers]).add(torch.from_numpy(x))
    assert isinstance(shard._tables["keys"], torch.Tensor)
    codes, keys = shard.hash_queries(torch.from_numpy(q))
    with pytest.raises(DeviceMismatchError, match="got a numpy array on cpu"):
        shard.partial_scores(query_codes=codes.numpy(), query_keys=keys.numpy())
    got = shard.partial_scores(query_codes=codes, query_keys=keys)
    assert isinstance(got["count"], np.ndarray) and got["count"].shape == (len(q), B)


# ------------------------------------------------------------------------------ bad input
def test_errors(data):
    x, q, layers, single = data
    with pytest.raises(ConfigError, match="empty list"):
        ShardedIndex(layers, devices=[])
    with pytest.raises(ConfigError, match="'gpu0'"):
        ShardedIndex(layers, devices=["gpu0"])
    with pytest.raises(ConfigError, match="n_shards: expected an integer >= 1, got 0"):
        ShardedIndex(layers, devices="cpu", n_shards=0)
    with pytest.raises(ConfigError, match="expected a LearnableLSHIndex, got ndarray"):
        ShardedIndex(x)
    with pytest.raises(NotFittedError, match="no hash layers"):
        ShardedIndex(LearnableLSHIndex(n_tables=2, n_bits=4), devices="cpu")
    with pytest.raises(ConfigError, match="expected at least one index"):
        ShardedIndex.from_shards([])
    other = LearnableLSHIndex(DIM, n_tables=B, n_bits=R, seed=12).add(x[:10])
    with pytest.raises(ConfigError, match="^from_shards: the indexes must share the same hash layers"):
        ShardedIndex.from_shards([single, other], devices="cpu")
    with pytest.raises(ConfigError, match=r"^from_shards: expected an index with \(dim, n_tables, n_bits"):
        ShardedIndex.from_shards([single, LearnableLSHIndex(DIM, n_tables=B, n_bits=R + 1).add(x[:10])], devices="cpu")
    sh = ShardedIndex(layers, devices="cpu", n_shards=2)
    with pytest.raises(NotFittedError, match="empty"):
        sh.score(q)
    sh.add(x)
    with pytest.raises(InvalidInputError, match=f"expected dimension {DIM}, got shape \\(5, 3\\)"):
        sh.score(np.zeros((5, 3), np.float32))
    with pytest.raises(InvalidInputError, match=f"expected dimension {DIM}"):
        sh.add(np.zeros((5, 3), np.float32))
    with pytest.raises(InvalidDTypeError, match="int64"):
        sh.score(np.zeros((5, DIM), np.int64))
    with pytest.raises(ConfigError, match="query_batch"):
        sh.score(q, query_batch=0)
    with pytest.raises(ConfigError, match="mode"):
        sh.score(q, "median")


def test_partial_scores_errors(data):
    x, q, layers, single = data
    codes, keys = single.hash_queries(q)
    with pytest.raises(ConfigError, match="either queries, or both"):
        single.partial_scores(q, query_codes=codes, query_keys=keys)
    with pytest.raises(ConfigError, match="query_keys=False"):
        single.partial_scores(query_codes=codes)
    with pytest.raises(ConfigError, match="either queries"):
        single.partial_scores()
    with pytest.raises(InvalidDTypeError, match="query_codes: expected float32 .*got float64"):
        single.partial_scores(query_codes=codes.astype(np.float64), query_keys=keys)
    with pytest.raises(InvalidDTypeError, match="query_keys: expected uint64 .*got int64"):
        single.partial_scores(query_codes=codes, query_keys=keys.astype(np.int64))
    with pytest.raises(InvalidDTypeError, match="got list"):
        single.partial_scores(query_codes=codes.tolist(), query_keys=keys)
    with pytest.raises(InvalidInputError, match=f"query_codes: expected shape \\(M >= 1, {B}, {R}\\), got"):
        single.partial_scores(query_codes=codes[:, :2], query_keys=keys)
    with pytest.raises(InvalidInputError, match=f"query_keys: expected shape \\({len(q)}, {B}\\), got \\(3, {B}\\)"):
        single.partial_scores(query_codes=codes, query_keys=keys[:3])
    bad = codes.copy()
    bad[3, 1, 2] = np.nan
    with pytest.raises(InvalidInputError, match=r"sigmoid codes in \[0, 1\].*or NaN"):
        single.partial_scores(query_codes=bad, query_keys=keys)
    with pytest.raises(NotFittedError):
        layers.empty_like().partial_scores(query_codes=codes, query_keys=keys)
    a = single.partial_scores(q[:10], "light")
    b = single.partial_scores(q[:11], "light")
    with pytest.raises(InvalidInputError, match="shard 1 answered count \\(11, 5\\)"):
        single.combine_partial_scores([a, b])
    a.pop("query_codes")
    with pytest.raises(ConfigError, match="needs the query codes"):
        single.combine_partial_scores([a])
    with pytest.raises(InvalidInputError, match="query_codes of shape"):
        single.combine_partial_scores([a], query_codes=codes)
    with pytest.raises(ConfigError, match="every shard must use mode 'light'"):
        single.combine_partial_scores([a, single.partial_scores(q[:10], "mean")])


# ------------------------------------------------------------------------------ real GPUs
def _gpu_skip_reason(n_needed):
    import llsh_index

    ok, why = llsh_index.cuda_available(verbose=True)
    if not ok:
        return why
    if torch.cuda.device_count() < n_needed:
        return f"needs {n_needed} GPUs, {torch.cuda.device_count()} visible"
    return None


@pytest.fixture
def poisoned():
    from llsh_index import _cuda_engine as ce

    old = ce.set_poison(True)  # NaN / 0xFF in every output: an element a kernel skips fails the comparison
    yield
    ce.set_poison(old)


def _host_twin(index):
    """A CPU index with exactly the tables of a device index (same codes and keys, no re-hashing):
    GPU and CPU hashing may round differently, which could move a code across a key bit."""
    twin = index.empty_like().to("cpu")
    twin._tables = {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in index._tables.items()}
    return twin


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_skip_reason(1) is not None, reason=str(_gpu_skip_reason(1)))
def test_gpu_partial_scores_match_cpu(data, poisoned):
    x, q, layers, _ = data
    dev = layers.empty_like().to("cuda:0").add(torch.from_numpy(x).cuda())
    twin = _host_twin(dev)
    qd = torch.from_numpy(q).cuda()
    codes, keys = dev.hash_queries(qd)
    assert codes.is_cuda and keys.dtype == torch.uint64 and codes.shape == (len(q), B, R)
    hc, hk = codes.cpu().numpy(), keys.cpu().numpy()
    for mode in ("mean", "light", "squared"):
        want = twin.partial_scores(mode=mode, query_codes=hc, query_keys=hk)
        for got in (dev.partial_scores(qd, mode), dev.partial_scores(mode=mode, query_codes=codes, query_keys=keys)):
            assert isinstance(got["count"], np.ndarray) and isinstance(got["sum"], np.ndarray)
            np.testing.assert_array_equal(got["count"], want["count"], err_msg=mode)
            np.testing.assert_allclose(got["sum"], want["sum"], rtol=1e-5, atol=1e-5, err_msg=mode)
        light = mode == "light"
        np.testing.assert_allclose(dev.combine_partial_scores([got], query_codes=codes if light else None),
                                   twin.combine_partial_scores([want], query_codes=hc if light else None),
                                   rtol=1e-5, atol=1e-5, err_msg=mode)
    with pytest.raises(DeviceMismatchError, match="got a numpy array"):
        dev.partial_scores(query_codes=hc, query_keys=hk)
    with pytest.raises(DeviceMismatchError, match="got data on cpu"):
        dev.partial_scores(query_codes=torch.from_numpy(hc), query_keys=keys)


def _gpu_reference(sh, q, modes):
    """One index on shard 0's device holding exactly the shards' items (their merge), hashing the
    queries with the same kernels: the sharded scores must equal its scores to 1e-6."""
    ref = sh.gather().to(sh.devices[0])
    qd = torch.from_numpy(q).to(sh.devices[0])
    for mode in modes:
        np.testing.assert_allclose(sh.table_distances(q, mode), ref.table_distances(qd, mode).cpu().numpy(),
                                   rtol=1e-6, atol=1e-6, err_msg=mode)
        np.testing.assert_allclose(sh.score(qd, mode), ref.score(qd, mode).cpu().numpy(), rtol=1e-6, atol=1e-6,
                                   err_msg=mode)
    hits = np.stack([s.partial_scores(qd)["count"] > 0 for s in sh.shards if s.ntotal]).sum(axis=0)
    return hits


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_skip_reason(1) is not None, reason=str(_gpu_skip_reason(1)))
def test_gpu_two_shards_on_one_device(data, poisoned):
    x, q, layers, _ = data
    sh = ShardedIndex(layers, devices=["cuda:0", "cuda:0"]).add(x)
    assert sh.devices == ["cuda:0", "cuda:0"] and sh.shard_sizes == [1500, 1500]
    assert all(s._tables["keys"].is_cuda for s in sh.shards)
    hits = _gpu_reference(sh, q, ("mean", "light", "squared"))
    assert np.any(hits == 1) and np.any((hits == 0).all(axis=1))  # one-shard buckets and global misses
    light = ShardedIndex(layers, devices=["cuda:0"], n_shards=3, mode="light", store_codes=False).add(
        torch.from_numpy(x).cuda())
    _gpu_reference(light, q, ("light", "squared"))


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_skip_reason(2) is not None, reason=str(_gpu_skip_reason(2)))
def test_multi_gpu_shards(data, poisoned):
    x, q, layers, _ = data
    n = torch.cuda.device_count()
    sh = ShardedIndex(layers, n_shards=2 * n).add(x)
    assert sh.devices == [f"cuda:{i % n}" for i in range(2 * n)]
    assert [str(s._tables["keys"].device) for s in sh.shards] == sh.devices
    _gpu_reference(sh, q, ("mean", "light", "squared"))
    # queries already on the second GPU are hashed there, with the same result
    q1 = torch.from_numpy(q).to("cuda:1")
    np.testing.assert_allclose(sh.score(q1), sh.score(q), rtol=1e-6, atol=1e-6)
    assert "cuda:1" in sh._hashers
    sh.close()


def test_two_saves_racing_into_one_folder_are_refused_at_load(data, tmp_path, monkeypatch):
    """The shard list records the digest of the bytes each save wrote: when another save replaces
    shard 0 between this save's shard 0 and its list, the folder mixes two saves and load refuses it
    (hashing the files after writing them listed the other save's shard 0 as this one's)."""
    from llsh_index import IndexFormatError, LearnableLSHIndex

    x, _, layers, _ = data
    a = ShardedIndex(layers, devices="cpu", n_shards=2).add(x[:40])
    b = ShardedIndex(layers, devices="cpu", n_shards=2).add(x[:100])
    real, done = LearnableLSHIndex._save, []

    def save(self, path, digest=None):
        out = real(self, path, digest)
        if self is b.shards[0] and not done:  # b has written its shard 0: a saves the whole folder now
            done.append(1)
            a.save_shards(tmp_path / "s")
        return out

    monkeypatch.setattr(LearnableLSHIndex, "_save", save)
    b.save_shards(tmp_path / "s")
    monkeypatch.undo()
    with pytest.raises(IndexFormatError, match="shard_00000.llsh is not the file shards.json lists"):
        ShardedIndex.load(tmp_path / "s", devices="cpu")


def test_shard_folders_with_a_nul_byte_or_a_link_loop_are_named(data, tmp_path):
    from llsh_index import IndexFormatError, WritePathError

    x, _, layers, _ = data
    sh = ShardedIndex(layers, devices="cpu", n_shards=2).add(x[:40])
    with pytest.raises(WritePathError, match="contains a NUL byte"):
        sh.save_shards(str(tmp_path / "a\0b"))
    (tmp_path / "folder_loop").symlink_to(tmp_path / "folder_loop")
    with pytest.raises(WritePathError, match="folder_loop is a symbolic link loop"):
        sh.save_shards(tmp_path / "folder_loop")
    sh.save_shards(tmp_path / "s")
    loop = tmp_path / "s" / "loop.llsh"
    loop.symlink_to(loop)
    with pytest.raises(IndexFormatError, match="symbolic link loop"):
        ShardedIndex.load([str(tmp_path / "s" / "shard_00000.llsh"), str(loop)], devices="cpu")


def test_a_recent_shard_takes_small_adds_and_scores_as_one_index(data):
    """README, "Growing an index": a small second shard takes the frequent small adds (add(rows,
    shard=1) rebuilds only its tables) and the pair scores exactly as one index of all the rows; a
    score running meanwhile sees each add whole or not at all, in every query round of one call;
    gather() then makes the next pair's large index."""
    import threading

    from llsh_index import ConfigError

    x, q, layers, _ = data
    main = layers.empty_like().add(x[:2000])
    live = ShardedIndex.from_shards([main, main.empty_like()], devices=["cpu"])
    starts = list(range(2000, len(x), 150))
    states = [layers.empty_like().add(x[:s]).score(q) for s in starts + [len(x)]]
    seen, stop = [], []

    def scorer():
        while not stop:
            seen.append(live.score(q, query_batch=7))  # many rounds per call

    thread = threading.Thread(target=scorer)
    thread.start()
    for start in starts:
        live.add(x[start:start + 150], shard=1)
    stop.append(1)
    thread.join()
    assert live.shard_sizes == [2000, len(x) - 2000]
    assert seen and all(any(np.array_equal(s, st) for st in states) for s in seen)
    one = layers.empty_like().add(x)
    for mode in ("mean", "light", "squared"):
        np.testing.assert_array_equal(live.score(q, mode), one.score(q, mode))
    merged = live.gather()  # the next pair: all the items in one index, and an empty recent shard
    assert live.shard_sizes == [2000, len(x) - 2000]  # gather leaves the pair as it is
    np.testing.assert_array_equal(merged.score(q), one.score(q))
    nxt = ShardedIndex.from_shards([merged, merged.empty_like()], devices=["cpu"])
    np.testing.assert_array_equal(nxt.score(q), one.score(q))
    for bad in (2, -1, 1.0):
        with pytest.raises(ConfigError, match="shard"):
            live.add(x[:3], shard=bad)


def test_gather_keeps_a_feature_space_any_shard_records_and_frees_the_lock_early(data, monkeypatch):
    """gather(): the first feature space a shard records (the host is shard 0's, which may have none);
    the shards' tables are taken under the read lock and merged after it (a waiting add, and the
    scores queued behind it, were held for the whole rebuild)."""
    from llsh_index import LearnableLSHIndex

    x, q, layers, single = data
    a, b = layers.empty_like().add(x[:100]), layers.empty_like().add(x[100:])
    a.feature_space_, b.feature_space_ = None, {"extractor": "x", "T": 16}
    sh = ShardedIndex.from_shards([a, b], devices=["cpu"])
    readers, real = [], LearnableLSHIndex.merge

    def merge(self, other):
        readers.append(sh._lock._readers)
        return real(self, other)

    monkeypatch.setattr(LearnableLSHIndex, "merge", merge)
    out = sh.gather()
    monkeypatch.undo()
    assert readers == [0, 0]  # no read lock held while merging
    assert out.feature_space_ == {"extractor": "x", "T": 16}
    np.testing.assert_array_equal(out.score(q), single.score(q))
