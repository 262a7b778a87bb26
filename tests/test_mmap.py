"""load(path, mmap=True): the codes stay a read-only view of a memory map of the file.

A mapped index must score as the paper defines it (checked against a NumPy oracle written here), bit
for bit as a normally loaded one in every operation, keep its codes read-only and shared with the
map, refuse damaged files as a normal load does, and survive save() over its own file.
"""
import hashlib
import json
import mmap
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from llsh_index import ConfigError, IndexFormatError, LearnableLSHIndex, ShardedIndex
from llsh_index import io as llsh_io

KIND = "LearnableLSHIndex"
DATA = Path(__file__).parent / "data"
D, B, R, N = 16, 4, 10, 1500


def features(rng, n):
    return rng.standard_normal((n, D)).astype(np.float32)


@pytest.fixture(scope="module", params=["float32", "float16"])
def saved(request, tmp_path_factory):
    """(path, index as built, training rows, queries): untrained layers (plain LSH), which is what the
    map holds whatever trained them."""
    rng = np.random.default_rng(7)
    # rows of a 4-dimensional subspace: ~150 buckets of ~10 rows per table, whose keys full-rank
    # queries often miss (about 1 in 4 of those below misses every table)
    x = (rng.standard_normal((N, 4)) @ rng.standard_normal((4, D))).astype(np.float32)
    index = LearnableLSHIndex(D, n_tables=B, n_bits=R, code_dtype=request.param, seed=3).add(x)
    q = np.concatenate([x[:40], features(rng, 60)])  # training rows hit their own buckets; the others
    path = tmp_path_factory.mktemp("mmap") / "index.llsh"
    index.save(str(path))
    return path, index, x, q


def map_of(a: np.ndarray):
    """The mmap.mmap object `a` is a view of, or None for an array that owns (or copied) its data."""
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap) else None


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------- the paper's score, in NumPy
def oracle_scores(index, train, queries, stored_dtype):
    """Per table: the mean L2 distance between the query's code and every stored code of the training
    items sharing its r-bit key (code >= 0.5); the miss value where no item does; the minimum over
    the tables.  Codes from index.encode (the stored ones rounded to the stored dtype), float64 sums."""
    c_train = index.encode(train)  # (N, b, r) float32
    c_query = index.encode(queries)
    stored = c_train.astype(stored_dtype).astype(np.float64)
    weights = 1 << np.arange(index.n_bits, dtype=np.int64)
    k_train = ((c_train >= 0.5) * weights).sum(axis=2)  # (N, b) keys
    k_query = ((c_query >= 0.5) * weights).sum(axis=2)
    out = np.full((len(queries), index.n_tables), index.default_miss_value(), np.float64)
    for i in range(len(queries)):
        for j in range(index.n_tables):
            bucket = stored[k_train[:, j] == k_query[i, j], j]
            if len(bucket):
                out[i, j] = np.sqrt(((bucket - c_query[i, j].astype(np.float64)) ** 2).sum(axis=1)).mean()
    return out.min(axis=1), out


def test_mapped_index_scores_as_the_numpy_oracle(saved):
    path, index, x, q = saved
    mapped = LearnableLSHIndex.load(str(path), mmap=True)
    want, per_table = oracle_scores(mapped, x, q, np.dtype(index.code_dtype))
    miss = mapped.default_miss_value()
    assert (per_table == miss).any() and (per_table < miss).any()  # both hits and misses are checked
    assert (want == miss).any() and (want < miss).any()  # ... and queries that miss every table
    np.testing.assert_allclose(mapped.score(q), want, rtol=0, atol=2e-6)
    np.testing.assert_allclose(mapped.table_distances(q), per_table, rtol=0, atol=2e-6)
    np.testing.assert_allclose(mapped.score(x[:40]), want[:40], rtol=0, atol=2e-6)


# ---------------------------------------------------------------------- the same as a normal load
def test_every_read_operation_equals_a_normal_load(saved):
    path, index, x, q = saved
    normal = LearnableLSHIndex.load(str(path))
    mapped = LearnableLSHIndex.load(str(path), mmap=True)
    assert mapped.ntotal == normal.ntotal == N
    for mode in ("mean", "light", "squared"):
        for kw in ({}, {"n_probes": 3}, {"miss_probes": 4}, {"reduce": "mean"},
                   {"n_probes": 2, "miss_probes": 5, "reduce": "mean"}):
            np.testing.assert_array_equal(mapped.score(q, mode, **kw), normal.score(q, mode, **kw),
                                          err_msg=f"{mode} {kw}")
        np.testing.assert_array_equal(mapped.table_distances(q, mode, n_probes=2),
                                      normal.table_distances(q, mode, n_probes=2))
        got, want = mapped.partial_scores(q, mode), normal.partial_scores(q, mode)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
        codes, keys = mapped.hash_queries(q)
        got = mapped.partial_scores(mode=mode, query_codes=codes, query_keys=keys)
        np.testing.assert_array_equal(got["sum"], want["sum"])
        assert mapped.largest_hit_distance(x[:100], mode) == normal.largest_hit_distance(x[:100], mode)
    np.testing.assert_array_equal(mapped.query_bucket_sizes(q), normal.query_bucket_sizes(q))
    assert mapped.stats() == normal.stats()
    for j in range(B):
        np.testing.assert_array_equal(mapped.bucket_sizes(j), normal.bucket_sizes(j))
    assert mapped.memory_bytes() == normal.memory_bytes()  # the derived statistics and directory counted alike
    assert mapped.to("cpu") is mapped
    np.testing.assert_array_equal(mapped.score(q), index.score(q))


def test_statistics_only_index_loads_mapped(tmp_path):
    rng = np.random.default_rng(2)
    x = features(rng, 600)
    light = LearnableLSHIndex(D, n_tables=3, n_bits=6, mode="light", store_codes=False).add(x)
    light.save(str(tmp_path / "light.llsh"))
    mapped = LearnableLSHIndex.load(str(tmp_path / "light.llsh"), mmap=True)
    for mode in ("light", "squared"):
        np.testing.assert_array_equal(mapped.score(x[:50], mode), light.score(x[:50], mode))
    np.testing.assert_array_equal(mapped.add(x[:10]).score(x[:50]), light.add(x[:10]).score(x[:50]))


# ---------------------------------------------------------------------- what is mapped
def test_codes_are_read_only_views_of_the_map(saved):
    path, index, _, _ = saved
    mapped = LearnableLSHIndex.load(str(path), mmap=True)
    codes = mapped._tables["codes"]
    assert not codes.flags.writeable and codes.flags.c_contiguous and codes.flags.aligned
    with pytest.raises(ValueError):
        codes[0, 0] = 0
    the_map = map_of(codes)
    assert isinstance(the_map, mmap.mmap)
    assert np.shares_memory(codes, np.frombuffer(the_map, np.uint8))  # no private copy
    # the bytes it views are the file's, at the offset the header gives
    raw = path.read_bytes()
    hdr_len = llsh_io._PREFIX.unpack_from(raw)[2]
    assert (llsh_io._PREFIX.size + hdr_len) % 64 == 0  # the writer pads the header: the payload is aligned
    entry = {e["name"]: e for e in json.loads(raw[24:24 + hdr_len])["arrays"]}["t_codes"]
    at = llsh_io._PREFIX.size + hdr_len + entry["offset"]
    assert codes.tobytes() == raw[at:at + entry["nbytes"]]
    # the narrowed arrays are widened into memory, the others copied: only the codes stay mapped
    for k, v in mapped._tables.items():
        if k != "codes" and isinstance(v, np.ndarray):
            assert v.flags.writeable and map_of(v) is None, k
    np.testing.assert_array_equal(codes, index._tables["codes"])
    normal = LearnableLSHIndex.load(str(path))
    assert normal._tables["codes"].flags.writeable and map_of(normal._tables["codes"]) is None


def test_read_container_mmap_gives_read_only_views(saved):
    path, _, _, _ = saved
    meta, arrays = llsh_io.read_container(str(path), KIND, mmap=True)
    meta2, copies = llsh_io.read_container(str(path), KIND)
    assert meta == meta2 and arrays.keys() == copies.keys()
    maps = {id(map_of(a)) for a in arrays.values()}
    assert len(maps) == 1 and None not in {map_of(a) for a in arrays.values()}  # one map for all of them
    for k, a in arrays.items():
        assert not a.flags.writeable and a.flags.aligned and a.dtype == copies[k].dtype
        assert copies[k].flags.writeable
        np.testing.assert_array_equal(a, copies[k])


def test_old_files_with_unaligned_codes_load_mapped_with_a_warning():
    """Files written before the header was padded: float16 codes 3 bytes off alignment are copied (and
    said so), float32 codes 4 bytes off are aligned enough for their dtype and stay mapped."""
    with pytest.warns(UserWarning, match="not aligned for float16.*save the index again"):
        half = LearnableLSHIndex.load(str(DATA / "index_v1_float16.llsh"), mmap=True)
    assert half._tables["codes"].flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = LearnableLSHIndex.load(str(DATA / "index_v1_float32.llsh"), mmap=True)
    assert map_of(full._tables["codes"]) is not None
    rng = np.random.default_rng(0)
    for name, mapped in (("float16", half), ("float32", full)):
        normal = LearnableLSHIndex.load(str(DATA / f"index_v1_{name}.llsh"))
        q = rng.standard_normal((30, normal.dim)).astype(np.float32)
        for mode in ("mean", "light", "squared"):
            np.testing.assert_array_equal(mapped.score(q, mode), normal.score(q, mode))


# ---------------------------------------------------------------------- damaged files
def test_damaged_or_truncated_files_raise_index_format_error(saved, tmp_path):
    path, _, _, _ = saved
    raw = path.read_bytes()
    start = llsh_io._PREFIX.size + llsh_io._PREFIX.unpack_from(raw)[2]
    bad = tmp_path / "bad.llsh"
    cases = [("a flipped payload byte", raw[:len(raw) - 5] + bytes([raw[-5] ^ 1]) + raw[-4:]),
             ("a flipped first payload byte", raw[:start] + bytes([raw[start] ^ 0x80]) + raw[start + 1:]),
             ("a flipped header byte", raw[:30] + bytes([raw[30] ^ 1]) + raw[31:]),
             ("a trailing byte", raw + b"\0"), ("an empty file", b"")]
    cases += [(f"truncated at {cut}", raw[:cut]) for cut in (5, 24, start - 1, start, start + 1, len(raw) // 2,
                                                             len(raw) - 4096, len(raw) - 1)]
    for what, content in cases:
        bad.write_bytes(content)
        for load in (lambda: LearnableLSHIndex.load(str(bad), mmap=True),
                     lambda: llsh_io.read_container(str(bad), KIND, mmap=True)):
            with pytest.raises(IndexFormatError) as info:
                load()
            assert str(bad) in str(info.value), what


def test_a_missing_file_or_a_folder_is_refused_as_without_mmap(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        LearnableLSHIndex.load(str(tmp_path / "nothing.llsh"), mmap=True)
    with pytest.raises(IndexFormatError):
        LearnableLSHIndex.load(str(tmp_path), mmap=True)


# ---------------------------------------------------------------------- writes
def test_save_over_the_mapped_file(saved, tmp_path):
    path, index, x, q = saved
    target = tmp_path / "same.llsh"
    target.write_bytes(path.read_bytes())
    first = LearnableLSHIndex.load(str(target), mmap=True)
    second = LearnableLSHIndex.load(str(target), mmap=True)  # a reader still mapping the old file
    before = first.score(q)
    first.save(str(target))  # the same tables over the file they are mapped from
    np.testing.assert_array_equal(first.score(q), before)
    np.testing.assert_array_equal(LearnableLSHIndex.load(str(target), mmap=True).score(q), before)
    extra = 3 * features(np.random.default_rng(11), 200)
    first.add(extra)
    first.save(str(target))  # now different tables: the file is replaced, the old one stays mapped
    np.testing.assert_array_equal(second.score(q), before)
    np.testing.assert_array_equal(second.score(q, "light"), index.score(q, "light"))
    again = LearnableLSHIndex.load(str(target), mmap=True)
    assert again.ntotal == N + 200
    grown = LearnableLSHIndex.load(str(path)).add(extra)
    for mode in ("mean", "light", "squared"):
        np.testing.assert_array_equal(again.score(q, mode), grown.score(q, mode))
        np.testing.assert_array_equal(first.score(q, mode), grown.score(q, mode))


def test_add_and_merge_with_a_mapped_index(saved):
    path, index, x, q = saved
    digest = sha256(path)
    extra = features(np.random.default_rng(5), 300)
    other = index.empty_like().add(extra)

    def same(a, b):
        for k in ("keys", "table_start", "offsets", "ids", "codes"):
            np.testing.assert_array_equal(a._tables[k], b._tables[k], err_msg=k)
        for mode in ("mean", "light", "squared"):
            np.testing.assert_array_equal(a.score(q, mode), b.score(q, mode))

    want = LearnableLSHIndex.load(str(path)).add(extra)
    same(LearnableLSHIndex.load(str(path), mmap=True).add(extra), want)
    same(LearnableLSHIndex.load(str(path), mmap=True).merge(other), want)  # mapped <- other
    want_other_first = index.empty_like().add(extra).add(x)
    same(index.empty_like().add(extra).merge(LearnableLSHIndex.load(str(path), mmap=True)), want_other_first)
    mapped = LearnableLSHIndex.load(str(path), mmap=True)
    copy = mapped.empty_like().merge(mapped)  # into an empty index: a private copy of the tables
    assert copy._tables["codes"].flags.writeable and map_of(copy._tables["codes"]) is None
    same(copy, LearnableLSHIndex.load(str(path)))
    three = LearnableLSHIndex.merge_all([mapped, other, LearnableLSHIndex.load(str(path), mmap=True)])
    same(three, index.empty_like().add(x).add(extra).add(x))
    assert mapped.ntotal == N and not mapped._tables["codes"].flags.writeable  # the sources untouched
    assert sha256(path) == digest


def test_sharded_load_mmap(saved, tmp_path):
    path, index, x, q = saved
    sharded = ShardedIndex(index, devices="cpu", n_shards=2).add(x)
    sharded.save_shards(tmp_path / "s")
    normal = ShardedIndex.load(tmp_path / "s", devices="cpu")
    mapped = ShardedIndex.load(tmp_path / "s", mmap=True)
    assert mapped.devices == ["cpu", "cpu"]
    for s in mapped.shards:
        assert map_of(s._tables["codes"]) is not None
    for mode in ("mean", "light", "squared"):
        np.testing.assert_array_equal(mapped.score(q, mode), normal.score(q, mode))
    np.testing.assert_array_equal(mapped.gather().score(q), normal.gather().score(q))


# ---------------------------------------------------------------------- arguments
@pytest.mark.parametrize("value", ["yes", 1, None, 0.0])
def test_mmap_must_be_a_bool(saved, value):
    path = saved[0]
    with pytest.raises(ConfigError, match=r"mmap: expected True or False, got"):
        LearnableLSHIndex.load(str(path), mmap=value)
    with pytest.raises(ConfigError, match=r"mmap: expected True or False, got"):
        ShardedIndex.load(str(path), mmap=value)
    with pytest.raises(TypeError):
        LearnableLSHIndex.load(str(path), "cpu", True)  # keyword only


def test_mmap_on_another_device_is_refused(saved):
    path = saved[0]
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=rf"expected device='cpu', got '{device}'"):
            LearnableLSHIndex.load(str(path), device=device, mmap=True)
        with pytest.raises(ConfigError, match=rf"expected devices \['cpu'\].*got '{device}'"):
            ShardedIndex.load(str(path), devices=["cpu", device], mmap=True)
    with pytest.raises(ConfigError, match="device: expected"):
        LearnableLSHIndex.load(str(path), device="tpu", mmap=True)
    assert LearnableLSHIndex.load(str(path), device="cpu", mmap=True).device == "cpu"


def test_header_padding_keeps_files_readable_by_the_plain_reader(saved):
    """The spaces after the JSON are part of the header (its length and checksum); json reads past them."""
    raw = saved[0].read_bytes()
    _, _, hdr_len, crc = struct.unpack_from("<8sIQI", raw)
    header = raw[24:24 + hdr_len]
    assert (24 + hdr_len) % 64 == 0 and zlib.crc32(header) == crc
    assert json.loads(header)["kind"] == KIND
    assert 0 <= len(header) - len(header.rstrip(b" ")) < 64
