"""Property tests: the engine and the index against the NumPy oracle on random shapes and values.

Distributions cover the corners of bucketing: everything in one bucket, every item in its own
bucket, heavy skew, a few keys, codes exactly 0.5 (a 1 bit) next to the largest float below 0.5
(a 0 bit), sigmoid codes crowded around 0.5; r in 1..64, b in 1..8, float32 and float16 storage.

CI budget: every test runs a fixed number of derandomized examples (EXAMPLES below, 200 in all),
no deadline, no example database, so a run is reproducible and its time bounded.  Set
LLSH_FUZZ_SCALE=10 for a longer local hunt (still derandomized; HYPOTHESIS_SEED-style
randomness: LLSH_FUZZ_RANDOM=1).
"""
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracle
from llsh_index import LearnableLSHIndex, _engine

MODES = ["mean", "light", "squared"]
TABLE_KEYS = ("keys", "table_start", "offsets", "ids", "codes", "bucket_sum", "bucket_sqnorm")
_SCALE = float(os.environ.get("LLSH_FUZZ_SCALE", "1"))
EXAMPLES = {"engine": 80, "index": 60, "repeated_add": 40, "permutation": 20}  # 200 in CI


def fuzz_settings(name):
    return settings(max_examples=max(1, int(EXAMPLES[name] * _SCALE)), deadline=None,
                    derandomize=not os.environ.get("LLSH_FUZZ_RANDOM"), database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


BELOW_HALF = np.nextafter(np.float32(0.5), np.float32(0))
DISTRIBUTIONS = ["uniform", "near-half", "one-bucket", "all-unique", "skew", "few-keys", "exact-half"]


def make_codes(kind, rng, n, b, r):
    """(n, b, r) float32 codes in [0, 1] with the named bucket distribution."""
    if kind == "uniform":
        c = rng.random((n, b, r))
    elif kind == "near-half":  # sigmoid of small logits: many bits decided by a hair
        c = 1 / (1 + np.exp(-0.05 * rng.standard_normal((n, b, r))))
    elif kind == "one-bucket":
        side = rng.random((1, b, r)) < 0.5  # one random key per table, shared by every item
        c = np.where(side, 0.5 + 0.5 * rng.random((n, b, r)), 0.49 * rng.random((n, b, r)))
    elif kind == "all-unique":  # distinct keys per table (as many as 2^r allows)
        c = np.empty((n, b, r))
        for j in range(b):
            pool = min(n, 2 ** min(r, 20))
            ints = rng.choice(2 ** min(r, 20), size=pool, replace=False)
            ints = np.resize(ints, n)
            bits = (ints[:, None] >> np.arange(r)[None, :] % 20) & 1
            c[:, j] = np.where(bits == 1, 0.5 + 0.5 * rng.random((n, r)), 0.5 * rng.random((n, r)))
    elif kind == "skew":  # 90% of the items share one code (and key), the rest are spread
        c = rng.random((n, b, r))
        heavy = rng.random(n) < 0.9
        c[heavy] = c[0]
    elif kind == "few-keys":
        k = int(rng.integers(1, 5))
        patterns = rng.random((k, b, r)) < 0.5
        pick = patterns[rng.integers(0, k, n)]
        c = np.where(pick, 0.5 + 0.5 * rng.random((n, b, r)), 0.5 * rng.random((n, b, r)))
    elif kind == "exact-half":  # only 0.5 (bit 1) and the float just below it (bit 0)
        c = np.where(rng.random((n, b, r)) < 0.5, np.float32(0.5), BELOW_HALF)
    else:
        raise ValueError(kind)
    return c.astype(np.float32)


@st.composite
def problems(draw, max_n=160):
    b = draw(st.integers(1, 8))
    r = draw(st.one_of(st.integers(1, 64), st.sampled_from([1, 32, 63, 64])))
    n = draw(st.integers(1, max_n))
    kind = draw(st.sampled_from(DISTRIBUTIONS))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return b, r, n, kind, seed


def engine_build(codes, stored_dtype, ids=None, keep_codes=True, n_threads=0):
    n, b, r = codes.shape
    keys = _engine.binarize(codes)
    stored = np.ascontiguousarray(codes.astype(stored_dtype).transpose(1, 0, 2))
    if ids is None:
        ids = np.arange(n, dtype=np.int64)
    ids2 = np.ascontiguousarray(np.broadcast_to(ids, (b, n)))
    return _engine.build_tables(np.ascontiguousarray(keys.T), stored, ids2, keep_codes=keep_codes,
                                n_threads=n_threads), keys


def check_layout(t, codes, stored, ids):
    """The sorted-table invariants of csrc/include/llsh/sorted_tables.h, against the raw items."""
    n, b, r = codes.shape
    keys, ts, off = t["keys"], t["table_start"], t["offsets"]
    assert ts.shape == (b + 1,) and ts[0] == 0 and ts[-1] == len(keys) and np.all(np.diff(ts) >= 1)
    assert off[0] == 0 and off[-1] == b * n and np.all(np.diff(off) >= 1)
    if r < 64:
        assert np.all(keys < (np.uint64(1) << np.uint64(r)))
    pos = {int(v): i for i, v in enumerate(ids)}
    for j in range(b):
        k = keys[ts[j]:ts[j + 1]]
        assert np.all(k[1:] > k[:-1])
        expected = {}
        for i in range(n):
            expected.setdefault(oracle.pack(codes[i, j]), []).append(int(ids[i]))
        assert sorted(expected) == [int(v) for v in k]
        for u in range(ts[j], ts[j + 1]):
            rows = slice(off[u], off[u + 1])
            assert list(t["ids"][rows]) == sorted(expected[int(keys[u])])  # (key, id) order
            src = np.array([pos[int(i)] for i in t["ids"][rows]])
            vals = stored[src, j].astype(np.float64)
            if t["codes"] is not None:
                np.testing.assert_array_equal(t["codes"][rows], stored[src, j])
            np.testing.assert_allclose(t["bucket_sum"][u], vals.sum(0), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(t["bucket_sqnorm"][u], (vals ** 2).sum(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- engine
@fuzz_settings("engine")
@given(problems(), st.sampled_from(MODES), st.sampled_from([np.float32, np.float16]),
       st.sampled_from([1e10, None, 0.0]), st.integers(0, 3))
def test_engine_against_oracle(problem, mode, stored_dtype, miss, n_threads):
    b, r, n, kind, seed = problem
    rng = np.random.default_rng(seed)
    codes = make_codes(kind, rng, n, b, r)
    ids = rng.permutation(n).astype(np.int64) + int(rng.integers(0, 1 << 40))  # arbitrary unique ids
    tables, keys = engine_build(codes, stored_dtype, ids=ids, n_threads=n_threads)
    stored = codes.astype(stored_dtype)
    check_layout(tables, codes, stored, ids)
    for i in range(min(n, 20)):
        for j in range(b):
            assert int(keys[i, j]) == oracle.pack(codes[i, j])
    m = int(rng.integers(1, 40))
    queries = np.concatenate([codes[rng.integers(0, n, m)], make_codes(kind, rng, m, b, r),
                              rng.random((m, b, r)).astype(np.float32)])
    miss = float(np.sqrt(r)) if miss is None else miss
    got, visited = _engine.lookup(tables, queries, _engine.binarize(queries), _engine.MODES[mode], miss, n_threads)
    expected = oracle.table_distances(oracle.build(codes, stored.astype(np.float32)), queries, mode, miss)
    missed = expected == miss
    np.testing.assert_array_equal(got[missed], np.float32(miss))
    np.testing.assert_allclose(got[~missed], expected[~missed], rtol=1e-5, atol=2e-5)
    assert got.dtype == np.float32 and got.shape == (3 * m, b) and np.isfinite(got).all()
    q_keys = _engine.binarize(queries)
    sizes = {}
    for j in range(b):
        for u in range(tables["table_start"][j], tables["table_start"][j + 1]):
            sizes[(j, int(tables["keys"][u]))] = int(tables["offsets"][u + 1] - tables["offsets"][u])
    per = [sizes.get((j, int(q_keys[i, j])), 0) for i in range(3 * m) for j in range(b)]
    assert visited == (sum(per) if mode == "mean" else sum(p > 0 for p in per))


@fuzz_settings("permutation")
@given(problems(max_n=300), st.booleans())
def test_engine_tables_do_not_depend_on_item_order_or_threads(problem, keep_codes):
    """The tables are a function of the set of (id, code): any input order, any thread count."""
    b, r, n, kind, seed = problem
    rng = np.random.default_rng(seed)
    codes = make_codes(kind, rng, n, b, r)
    ids = np.arange(n, dtype=np.int64)
    a, _ = engine_build(codes, np.float32, ids=ids, keep_codes=keep_codes, n_threads=1)
    perm = rng.permutation(n)
    p, _ = engine_build(codes[perm], np.float32, ids=ids[perm], keep_codes=keep_codes, n_threads=3)
    for k in TABLE_KEYS:
        if a[k] is None:
            assert p[k] is None and not keep_codes
        elif k in ("bucket_sum", "bucket_sqnorm"):
            # sums run in (key, id) order whatever the input order, so they are bit-identical too
            np.testing.assert_array_equal(a[k], p[k], err_msg=k)
        else:
            np.testing.assert_array_equal(a[k], p[k], err_msg=k)


# ---------------------------------------------------------------------- index
FEATURES = ["gaussian", "clustered", "duplicates", "constant-rows", "huge-scale", "tiny-scale", "sparse"]


def make_features(kind, rng, n, d):
    if kind == "gaussian":
        x = rng.standard_normal((n, d))
    elif kind == "clustered":
        centres = 3 * rng.standard_normal((4, d))
        x = centres[rng.integers(0, 4, n)] + 0.1 * rng.standard_normal((n, d))
    elif kind == "duplicates":
        x = np.repeat(rng.standard_normal((max(1, n // 10), d)), 10, axis=0)[:n]
        if len(x) < n:
            x = np.concatenate([x, rng.standard_normal((n - len(x), d))])
    elif kind == "constant-rows":  # LayerNorm -> 0 -> every code exactly sigmoid(0) = 0.5 -> all-ones keys
        x = np.where(rng.random((n, 1)) < 0.5, rng.standard_normal((n, 1)), rng.standard_normal((n, d)))
        x = np.broadcast_to(x, (n, d)) if x.shape[1] == 1 else x
    elif kind == "huge-scale":
        x = 1e15 * rng.standard_normal((n, d))  # beyond ~1e19 LayerNorm's float32 variance overflows
    elif kind == "tiny-scale":
        x = 1e-30 * rng.standard_normal((n, d))
    elif kind == "sparse":
        x = rng.standard_normal((n, d)) * (rng.random((n, d)) < 0.05)
    else:
        raise ValueError(kind)
    return np.ascontiguousarray(x, dtype=np.float32)


@fuzz_settings("index")
@given(st.integers(1, 8), st.integers(1, 64), st.integers(2, 48), st.integers(1, 150),  # d >= 2: test_inputs
       st.sampled_from(FEATURES), st.sampled_from(MODES), st.sampled_from(["float32", "float16"]),
       st.one_of(st.none(), st.integers(1, 70)), st.integers(0, 2 ** 32 - 1))
def test_index_against_oracle(b, r, d, n, kind, mode, code_dtype, batch_size, seed):
    rng = np.random.default_rng(seed)
    train = make_features(kind, rng, n, d)
    test = np.concatenate([train[rng.integers(0, n, 10)], make_features(kind, rng, 10, d)])
    index = LearnableLSHIndex(n_tables=b, n_bits=r, mode=mode, code_dtype=code_dtype, batch_size=batch_size,
                              seed=int(seed % 1000))
    index.add(train)
    codes = index.encode(train)
    assert codes.shape == (n, b, r) and codes.dtype == np.float32
    np.testing.assert_allclose(codes, oracle.encode(train, index.encoder.weight.detach().numpy(), b, r), atol=1e-4)
    keys = index.hash_keys(train)
    assert all(int(keys[i, j]) == oracle.pack(codes[i, j]) for i in range(min(n, 20)) for j in range(b))
    stored = codes.astype(np.float16).astype(np.float32) if code_dtype == "float16" else codes
    miss = index.default_miss_value(mode)
    expected = oracle.table_distances(oracle.build(codes, stored), index.encode(test), mode, miss)
    got = index.table_distances(test)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(index.score(test), got.min(axis=1))
    assert index.ntotal == n and sum(index.stats()["n_buckets"]) == len(index._tables["keys"])
    # a stored row always hits its own bucket in every table: its score is below the miss value
    assert np.all(index.table_distances(train[:5]) < miss)


@fuzz_settings("repeated_add")
@given(st.integers(1, 6), st.integers(1, 64), st.integers(2, 300), st.sampled_from(FEATURES),
       st.sampled_from(["float32", "float16"]), st.booleans(), st.integers(1, 5), st.integers(0, 2 ** 32 - 1))
def test_repeated_add_equals_one_add(b, r, n, kind, code_dtype, store_codes, n_parts, seed):
    rng = np.random.default_rng(seed)
    x = make_features(kind, rng, n, 12)
    cuts = np.sort(rng.integers(1, n, size=min(n_parts, n) - 1)) if n_parts > 1 else []
    mode = "mean" if store_codes else "light"
    kw = dict(n_tables=b, n_bits=r, mode=mode, code_dtype=code_dtype, store_codes=store_codes)
    one = LearnableLSHIndex(batch_size=int(rng.integers(1, 400)), **kw).add(x)
    many = LearnableLSHIndex(batch_size=int(rng.integers(1, 400)), **kw)
    parts = [p for p in np.split(x, cuts) if len(p)]
    for part in parts:
        many.add(part)
    assert many.ntotal == one.ntotal == n
    if store_codes:
        for k in TABLE_KEYS:
            np.testing.assert_array_equal(many._tables[k], one._tables[k], err_msg=k)  # bit-identical
        np.testing.assert_array_equal(many.score(x[:30]), one.score(x[:30]))
    else:
        for k in ("keys", "table_start", "offsets"):
            np.testing.assert_array_equal(many._tables[k], one._tables[k], err_msg=k)
        # statistics-only merges add per-part sums: equal up to float64 rounding
        np.testing.assert_allclose(many._tables["bucket_sum"], one._tables["bucket_sum"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(many._tables["bucket_sqnorm"], one._tables["bucket_sqnorm"], rtol=1e-12,
                                   atol=1e-12)
        np.testing.assert_allclose(many.score(x[:30]), one.score(x[:30]), rtol=1e-6, atol=1e-7)


def test_ci_budget_is_200_examples():
    assert sum(EXAMPLES.values()) == 200
