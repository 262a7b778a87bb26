"""LearnableLSHIndex end to end against the NumPy oracle of the paper."""
import math

import numpy as np
import pytest
import torch

import llsh_index
import oracle
from llsh_index import LearnableLSHIndex

MODES = ["mean", "light", "squared"]


def clustered(rng, n, d, n_clusters=5, noise=0.3):
    centres = rng.standard_normal((n_clusters, d)) * 2
    return (centres[rng.integers(0, n_clusters, n)] + noise * rng.standard_normal((n, d))).astype(np.float32)


def test_encoder_matches_numpy_definition(rng):
    x = rng.standard_normal((64, 48)).astype(np.float32) * 3 + 1
    index = LearnableLSHIndex(48, n_tables=3, n_bits=10, seed=7)
    w = index.encoder.weight.detach().numpy()
    expected = oracle.encode(x, w, 3, 10)
    np.testing.assert_allclose(index.encode(x), expected, atol=1e-5)
    # Xavier-uniform bound of one Linear(d, r), and the full range used
    bound = math.sqrt(6 / (48 + 10))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("b,r", [(8, 32), (1, 16), (2, 1), (3, 64)])
def test_scores_match_oracle(rng, mode, b, r):
    train = clustered(rng, 600, 40)
    test = np.concatenate([train[:20], clustered(rng, 20, 40, noise=1.0)])
    index = LearnableLSHIndex(n_tables=b, n_bits=r, mode=mode, miss_value=1e10).add(train)
    tables = oracle.build(index.encode(train))
    expected = oracle.table_distances(tables, index.encode(test), mode, 1e10)
    np.testing.assert_allclose(index.table_distances(test), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(index.score(test), expected.min(axis=1), rtol=1e-5, atol=1e-5)
    assert index.score(test).shape == (40,) and index.table_distances(test).shape == (40, b)


def test_default_miss_value_is_largest_possible_distance(rng):
    train = 0.0 * rng.standard_normal((50, 8)).astype(np.float32)
    train[:, 0] = 1.0  # every row identical -> one bucket per table
    index = LearnableLSHIndex(n_tables=4, n_bits=16).add(train)
    far = -train  # flips every logit -> complementary key, a guaranteed miss
    assert np.all(index.table_distances(far) == np.float32(math.sqrt(16)))
    assert np.all(index.score(far, mode="squared") == 16.0)
    assert index.score(train[:3]).max() < math.sqrt(16)


def test_repeated_add_equals_one_add(rng):
    x = clustered(rng, 3000, 32)
    one = LearnableLSHIndex(n_tables=4, n_bits=12, batch_size=512).add(x)
    many = LearnableLSHIndex(n_tables=4, n_bits=12, batch_size=512)
    for part in np.split(x, [700, 701, 702, 1900]):  # includes 1-row batches
        many.add(part)
    assert many.ntotal == one.ntotal == 3000
    for k in ("keys", "table_start", "offsets", "ids", "codes", "bucket_sum", "bucket_sqnorm"):
        np.testing.assert_array_equal(many._tables[k], one._tables[k], err_msg=k)
    np.testing.assert_array_equal(many.score(x[:100]), one.score(x[:100]))


def test_repeated_add_statistics_only(rng):
    x = clustered(rng, 2000, 32)
    one = LearnableLSHIndex(n_tables=4, n_bits=12, mode="light", store_codes=False).add(x)
    many = LearnableLSHIndex(n_tables=4, n_bits=12, mode="light", store_codes=False)
    many.add(x[:777]).add(x[777:])
    for k in ("keys", "table_start", "offsets"):
        np.testing.assert_array_equal(many._tables[k], one._tables[k])
    np.testing.assert_allclose(many._tables["bucket_sum"], one._tables["bucket_sum"], rtol=1e-12)
    for mode in ("light", "squared"):
        np.testing.assert_allclose(many.score(x[:50], mode), one.score(x[:50], mode), rtol=1e-6)
    full = LearnableLSHIndex(n_tables=4, n_bits=12).add(x)
    np.testing.assert_allclose(one.score(x[:50], "light"), full.score(x[:50], "light"), rtol=1e-6)


def test_chunking_does_not_change_results(rng):
    x = clustered(rng, 1500, 24)
    a = LearnableLSHIndex(n_tables=4, n_bits=16, batch_size=97).add(x)
    b = LearnableLSHIndex(n_tables=4, n_bits=16).add(x)
    np.testing.assert_allclose(a.score(x[:300]), b.score(x[:300]), atol=1e-6)
    np.testing.assert_array_equal(a._tables["keys"], b._tables["keys"])


@pytest.mark.parametrize("code_dtype", ["float32", "float16"])
def test_save_load_identical_scores(rng, tmp_path, code_dtype):
    x = clustered(rng, 800, 20)
    index = LearnableLSHIndex(n_tables=4, n_bits=16, code_dtype=code_dtype, seed=3)
    index.fit(x, video_ids=np.repeat(np.arange(8), 100), iterations=4, batch_size=64, queue_size=256,
              progress=False)
    index.add(x)
    path = tmp_path / "index.llsh"
    size = index.save(str(path))
    assert size == path.stat().st_size
    loaded = LearnableLSHIndex.load(str(path))
    assert loaded.is_trained and loaded.ntotal == 800 and loaded.code_dtype == code_dtype
    assert loaded.training_log_.losses == index.training_log_.losses
    assert loaded.training_config_ == index.training_config_ and loaded.training_config_.iterations == 4
    assert loaded.empty_like().training_config_ == index.training_config_
    for mode in MODES:
        np.testing.assert_array_equal(loaded.score(x[:100], mode), index.score(x[:100], mode))
    assert not list(tmp_path.glob(".llsh-*"))  # no temp file left behind


def test_save_load_statistics_only_and_empty(rng, tmp_path):
    x = clustered(rng, 300, 16)
    index = LearnableLSHIndex(n_tables=2, n_bits=8, mode="squared", store_codes=False).add(x)
    index.save(str(tmp_path / "a"))
    loaded = LearnableLSHIndex.load(str(tmp_path / "a"))
    np.testing.assert_array_equal(loaded.score(x), index.score(x))
    empty = LearnableLSHIndex(16, n_tables=2, n_bits=8)
    empty.save(str(tmp_path / "b"))
    e = LearnableLSHIndex.load(str(tmp_path / "b"))
    assert e.ntotal == 0
    np.testing.assert_array_equal(e.encoder.weight.detach().numpy(), empty.encoder.weight.detach().numpy())


def test_float16_storage_is_close_to_float32(rng):
    x = clustered(rng, 1000, 32)
    a = LearnableLSHIndex(n_tables=4, n_bits=16).add(x)
    b = LearnableLSHIndex(n_tables=4, n_bits=16, code_dtype="float16").add(x)
    assert b.memory_bytes() < a.memory_bytes()
    np.testing.assert_allclose(b.score(x[:200]), a.score(x[:200]), atol=2e-3)


@pytest.mark.parametrize("convert", [
    lambda x: x.astype(np.float64),
    lambda x: x.astype(np.float16),
    lambda x: np.asfortranarray(x),
    lambda x: np.repeat(x, 2, axis=1)[:, ::2],              # non-contiguous view of the same values
    lambda x: torch.from_numpy(x),
    lambda x: torch.from_numpy(x).to(torch.float64),
    lambda x: torch.from_numpy(x).T.contiguous().T,       # transposed-strided tensor
])
def test_accepts_numpy_and_torch_in_any_layout(rng, convert):
    x = clustered(rng, 300, 16)
    index = LearnableLSHIndex(n_tables=4, n_bits=16).add(x)
    ref = index.score(x[:50])
    got = index.score(convert(x[:50]))
    tol = 5e-3 if "float16" in str(getattr(convert(x[:1]), "dtype", "")) else 1e-6
    np.testing.assert_allclose(got, ref, atol=tol)


def test_stats_and_reset(rng):
    x = np.tile(rng.standard_normal((1, 8)).astype(np.float32), (10, 1))
    index = LearnableLSHIndex(n_tables=3, n_bits=8).add(x)
    st = index.stats()
    assert st["n_buckets"] == [1, 1, 1] and st["largest_bucket"] == [10, 10, 10]
    index.reset()
    assert index.ntotal == 0


def _bucket_oracle(index, x, q):
    """Per table, the training items' keys as the oracle's tuples of bits -> counts; the queries'
    bucket sizes (0 on a miss) and each table's number of bits that vary among the items."""
    codes, qcodes = index.encode(x), index.encode(q)
    sizes = np.zeros((len(q), index.n_tables), np.int64)
    active = []
    for j in range(index.n_tables):
        counts = {}
        for c in codes[:, j]:
            counts[oracle.key_of(c)] = counts.get(oracle.key_of(c), 0) + 1
        sizes[:, j] = [counts.get(oracle.key_of(c), 0) for c in qcodes[:, j]]
        bits = codes[:, j] >= 0.5
        active.append(int((bits.any(axis=0) & ~bits.all(axis=0)).sum()))
    return sizes, active


def test_query_bucket_sizes_and_active_bits_against_the_oracle(rng):
    x = rng.standard_normal((600, 24)).astype(np.float32)
    q = np.concatenate([x[:40], rng.standard_normal((160, 24)).astype(np.float32) * 3])
    index = LearnableLSHIndex(24, n_tables=4, n_bits=10, seed=1)
    with torch.no_grad():  # table 0 loses 3 bits: a zero row gives logit 0, sigmoid 0.5, bit 1 for every item
        index.encoder.weight[:3].zero_()
    index.add(x)
    want_sizes, want_active = _bucket_oracle(index, x, q)
    got = index.query_bucket_sizes(q)
    assert got.dtype == np.int64 and got.shape == (200, 4)
    np.testing.assert_array_equal(got, want_sizes)
    assert (got[:40] > 0).all() and (got == 0).any()  # items hit their own buckets; some queries miss
    st = index.stats()
    assert st["active_bits"] == want_active and st["active_bits"][0] == 7
    # a miss in every table is the paper's miss value
    d = index.table_distances(q)
    np.testing.assert_array_equal(d == index.default_miss_value(), got == 0)


def test_query_bucket_sizes_on_the_device_path(rng, monkeypatch):
    import fake_device

    x = rng.standard_normal((400, 16)).astype(np.float32)
    q = rng.standard_normal((100, 16)).astype(np.float32) * 2
    ref = LearnableLSHIndex(16, n_tables=3, n_bits=63, seed=0).add(x[:5]).add(x)  # keys use bit 62
    fake_device.install(monkeypatch)
    dev = LearnableLSHIndex(16, n_tables=3, n_bits=63, seed=0).add(torch.from_numpy(x[:5])).add(torch.from_numpy(x))
    assert isinstance(dev._tables["keys"], torch.Tensor)
    got = dev.query_bucket_sizes(torch.from_numpy(q))
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, ref.query_bucket_sizes(q))
    np.testing.assert_array_equal(dev.query_bucket_sizes(torch.from_numpy(x[:5])), ref.query_bucket_sizes(x[:5]))
    assert (ref.query_bucket_sizes(x[:5]) >= 2).all() and dev.stats() == ref.stats()


@pytest.mark.parametrize("offset", [0.0, 3.0, 1000.0])
def test_folded_layernorm_matches_definition(rng, offset):
    """hash_logits() folds LayerNorm into the GEMM; rows far from zero mean take the explicit path."""
    x = (rng.standard_normal((300, 64)) * rng.uniform(0.1, 10, (300, 1)) + offset).astype(np.float32)
    index = LearnableLSHIndex(64, n_tables=4, n_bits=16, seed=2)
    w = index.encoder.weight.detach().numpy()
    if offset < 100:  # at |mean| / std ~ 1e4 float32 input itself (and torch's LayerNorm) loses 1e-4
        np.testing.assert_allclose(index.encode(x), oracle.encode(x, w, 4, 16), atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(torch.sigmoid(index.encoder.hash_logits(torch.from_numpy(x))).numpy(),
                                   index.encoder(torch.from_numpy(x)).numpy(), atol=2e-6)


@pytest.mark.parametrize("d", [16, 100, 2560])
def test_constant_rows_normalise_to_exactly_zero(d):
    """LayerNorm of a constant row is exactly 0: every code 0.5, every key all ones, distance 0 to any
    other constant row.  The fold left float32 rounding noise of either sign on these exactly-0
    logits (amplified by rstd = 1 / sqrt(eps)), which set arbitrary bits for constants 0.001-0.0126."""
    values = np.r_[np.linspace(0.001, 0.0126, 25), [0.0, -0.003, 0.5, 7.0, -1e3]].astype(np.float32)
    rows = np.repeat(values[:, None], d, axis=1)
    index = LearnableLSHIndex(d, n_tables=4, n_bits=32, seed=1).add(np.full((1, d), 0.05, np.float32))
    codes = np.asarray(index.encode(rows))
    assert (codes == 0.5).all()
    np.testing.assert_array_equal(np.asarray(index.hash_keys(rows)), np.uint64(2 ** 32 - 1))
    np.testing.assert_array_equal(index.score(rows), 0.0)
    with torch.no_grad():  # the GPU path's fold (hash_logits on a CPU tensor takes the native one)
        assert (index.encoder(torch.from_numpy(rows)) == 0.5).all()


def test_native_epilogue_is_hash_logits_then_sigmoid(rng):
    """The CPU hashing epilogue (fold + sigmoid + keys in one pass) gives bit for bit the codes of
    hash_logits() followed by the engine's sigmoid, within 1e-6 of torch's sigmoid, whatever the
    length of the rows (the vectorised sigmoid's tail)."""
    from llsh_index import _engine

    for r in (5, 32):
        x = (rng.standard_normal((200, 40)) * rng.uniform(0.1, 10, (200, 1))).astype(np.float32)
        x[:10] += 100.0  # far rows: the explicit LayerNorm path
        index = LearnableLSHIndex(40, n_tables=3, n_bits=r, seed=1)
        codes, keys = index._encode_chunk(torch.from_numpy(x), "x", 0)
        with torch.no_grad():
            logits = index.encoder.hash_logits(torch.from_numpy(x)).numpy().copy()
        ref_codes, ref_keys = _engine.sigmoid_binarize(logits.copy())
        np.testing.assert_array_equal(codes, ref_codes)
        np.testing.assert_array_equal(keys, ref_keys)
        np.testing.assert_allclose(codes, torch.sigmoid(torch.from_numpy(logits)).numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("b,r", [(3, 20), (1, 1), (1, 2), (2, 2), (1, 8), (2, 4), (3, 5)])
def test_a_rows_code_does_not_depend_on_its_batch(rng, b, r):
    """Small batches are padded to a GEMM's row count (BLAS rounds a one-row product differently),
    and narrow layers (b * r < 16) to a GEMM's column count (MKL's rounding for 1, 2, 4 or 8 output
    columns depended on the rows): codes and keys of every row, alone or in batches of 2-17, equal
    the large batch's bit for bit, also for rows that take the explicit LayerNorm (far from the
    origin, constant)."""
    x = (rng.standard_normal((40, 48)) * rng.uniform(0.1, 10, (40, 1))).astype(np.float32)
    x[3] += 100.0  # far: |mean| >> std
    x[5] = 0.25  # constant
    index = LearnableLSHIndex(48, n_tables=b, n_bits=r, seed=2)
    codes, keys = index.encode(x), index.hash_keys(x)
    for size in (1, 2, 3, 15, 16, 17, 23):
        for i in [*range(0, 40 - size + 1, 7), 2, 3, 4, 5]:
            np.testing.assert_array_equal(index.encode(x[i:i + size]), codes[i:i + size])
            np.testing.assert_array_equal(index.hash_keys(x[i:i + size]), keys[i:i + size])
    index.add(x)
    full = index.score(x)
    np.testing.assert_array_equal(np.concatenate([index.score(x[i:i + 1]) for i in range(40)]), full)
    many = index.empty_like()
    for part in np.split(x, [1, 3, 20, 21]):
        many.add(part)
    for k in ("keys", "table_start", "offsets", "ids", "codes"):
        np.testing.assert_array_equal(many._tables[k], index._tables[k], err_msg=k)


@pytest.mark.parametrize("offset", [1e5, 1e7])
def test_float64_rows_far_from_zero_keep_their_precision(rng, offset):
    """float64 input is centred in float64 before the float32 cast where the offset would swamp it:
    the keys and codes are those of the float64 LayerNorm (the oracle, in float64).  Cast first,
    3.6% (1e5) and 92% (1e7) of the keys differed."""
    x = rng.random((200, 64)) + offset
    index = LearnableLSHIndex(64, n_tables=4, n_bits=8, seed=3)
    w = index.encoder.weight.detach().numpy().astype(np.float64)
    want = oracle.encode(x, w, 4, 8)
    np.testing.assert_allclose(index.encode(x), want, atol=1e-5)
    want_keys = np.array([[oracle.pack(want[i, j]) for j in range(4)] for i in range(len(x))], dtype=np.uint64)
    np.testing.assert_array_equal(np.asarray(index.hash_keys(x)), want_keys)
    index.add(x)
    np.testing.assert_allclose(index.score(x[:20]), oracle.scores(oracle.build(want), want[:20]), atol=1e-5)


def test_a_failed_first_call_leaves_the_dimension_open(rng):
    """add() / fit() that fail on an index without dim leave it as they found it (no layers, dim None)."""
    bad = rng.random((10, 16), dtype=np.float32)
    bad[3, 2] = np.nan
    calls = [lambda ix: ix.add(bad), lambda ix: ix.fit(bad[:3] * 0 + 1, lr=-1.0),
             lambda ix: ix.fit(rng.random((10, 16), dtype=np.float32), video_ids=np.arange(10))]
    for call in calls:
        index = LearnableLSHIndex(n_tables=4, n_bits=8)
        with pytest.raises(llsh_index.LLSHError):
            call(index)
        assert index.dim is None and index.encoder is None
        with pytest.raises(llsh_index.NotFittedError):
            index.save("unused.llsh")
        x = rng.random((20, 32), dtype=np.float32)
        index.add(x)  # another dimension is now fine
        np.testing.assert_array_equal(index.score(x), LearnableLSHIndex(32, n_tables=4, n_bits=8).add(x).score(x))


def test_racing_first_adds_of_two_dimensions_accept_one(rng):
    """Two first add() calls at once with different dimensions: one sets the layers, the other is
    refused with a typed error (both were accepted, one hashed by replaced layers)."""
    import threading

    a, b = rng.random((20000, 16), dtype=np.float32), rng.random((20000, 32), dtype=np.float32)
    for _ in range(10):
        index = LearnableLSHIndex(n_tables=4, n_bits=8)
        barrier, outcome = threading.Barrier(2), {}

        def go(x):
            barrier.wait()
            try:
                index.add(x)
                outcome[x.shape[1]] = "ok"
            except llsh_index.InvalidInputError:
                outcome[x.shape[1]] = "refused"

        threads = [threading.Thread(target=go, args=(x,)) for x in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcome.values()) == ["ok", "refused"]
        winner = next(d for d, o in outcome.items() if o == "ok")
        assert index.dim == winner and index.ntotal == 20000


@pytest.mark.parametrize("offset", [0.0, 10.0, 1e3, 1e4])
def test_float64_copies_of_float32_data_hash_as_the_float32_data(rng, offset):
    """The float64 centring is for values float32 cannot hold: a float64 copy of float32 rows far from
    zero mean (the explicit float32 LayerNorm's rows) gives the float32 rows' keys, codes and scores
    bit for bit (centring them too moved 129 of 4,000 keys at offset 1e4)."""
    x32 = (rng.standard_normal((4000, 128)) + offset).astype(np.float32)
    x64 = x32.astype(np.float64)
    index = LearnableLSHIndex(128, n_tables=8, n_bits=16, seed=1).add(x32[:2000])
    np.testing.assert_array_equal(index.hash_keys(x64), index.hash_keys(x32))
    np.testing.assert_array_equal(index.encode(x64), index.encode(x32))
    np.testing.assert_array_equal(index.score(x64[2000:2500]), index.score(x32[2000:2500]))


def test_reads_during_a_failing_first_add_are_typed(rng):
    """encode() racing a first add() that fails and drops its layers: a result or NotFittedError, never
    an AttributeError from layers that went away between the check and the use."""
    import threading

    x = rng.random((60000, 16), dtype=np.float32)
    x[-1, 3] = np.nan
    q = rng.random((3000, 16), dtype=np.float32)
    for _ in range(5):
        index = LearnableLSHIndex(n_tables=4, n_bits=8, batch_size=64)
        stop, errors = threading.Event(), []

        def reader():
            while not stop.is_set():
                try:
                    index.encode(q)
                except llsh_index.NotFittedError:
                    pass
                except Exception as exc:  # noqa: BLE001 - the test's subject
                    errors.append(exc)
                    return

        t = threading.Thread(target=reader)
        t.start()
        with pytest.raises(llsh_index.InvalidInputError):
            index.add(x)
        stop.set()
        t.join()
        assert not errors, errors
        assert index.dim is None and index.encoder is None


@pytest.mark.parametrize("edit, got", [
    (lambda c: np.where(np.arange(c.size).reshape(c.shape) == 4, np.nan, c), "got 1 NaN"),
    (lambda c: np.where(np.arange(c.size).reshape(c.shape) == 9, 282.5, c), r"got values from [\d.e-]+ to 282.5$"),
    (lambda c: np.where(np.arange(c.size).reshape(c.shape) == 9, -0.75, c), r"got values from -0.75 to 0\.\d+$"),
], ids=["nan", "above-one", "negative"])
def test_combine_partial_scores_refuses_query_codes_outside_0_1(rng, edit, got):
    """combine_partial_scores(query_codes=...) ("light") checked their dtype and shape only: a NaN
    code scored NaN, codes scaled by 100 a distance of ~280 against a miss value of 2.83."""
    x = clustered(rng, 400, 16)
    index = LearnableLSHIndex(16, n_tables=3, n_bits=8, mode="light").add(x)
    codes, keys = index.hash_queries(x[:6])
    part = index.partial_scores(query_codes=codes, query_keys=keys)
    np.testing.assert_allclose(index.combine_partial_scores([part], query_codes=codes), index.score(x[:6]),
                               rtol=1e-6, atol=1e-6)  # control: the codes as hash_queries() gives them
    bad = edit(codes.copy())
    with pytest.raises(llsh_index.InvalidInputError,
                       match=rf"combine_partial_scores: query_codes: expected sigmoid codes in \[0, 1\].* {got}"):
        index.combine_partial_scores([part], query_codes=bad)
    with pytest.raises(llsh_index.InvalidInputError, match="query_codes: expected sigmoid codes in"):
        index.combine_partial_scores([part], query_codes=torch.from_numpy(bad))  # a tensor, as partial_scores takes


@pytest.mark.parametrize("value", [10 ** 400, -(10 ** 400)], ids=["huge", "huge-negative"])
def test_miss_value_beyond_float64_is_a_config_error(rng, value):
    """A Python int beyond float64 raised an untyped OverflowError (math.isfinite / float) from the
    constructor and combine_partial_scores."""
    digits = f"{'a negative' if value < 0 else 'an'} integer of {len(str(abs(value)))} digits"
    with pytest.raises(llsh_index.ConfigError, match=f"miss_value: expected a finite number >= 0 .*got {digits}"):
        LearnableLSHIndex(16, miss_value=value)
    x = clustered(rng, 200, 16)
    index = LearnableLSHIndex(16, n_tables=2, n_bits=6, mode="squared").add(x)
    part = index.partial_scores(x[:4])
    with pytest.raises(llsh_index.ConfigError, match=f"miss_value: .* or \\+inf, got {digits}"):
        index.combine_partial_scores([part], miss_value=value)
    # the largest accepted values still work: float32's largest and +inf (combine)
    big = float(np.finfo(np.float32).max)
    assert LearnableLSHIndex(16, miss_value=int(big)).miss_value == big
    np.testing.assert_array_equal(index.combine_partial_scores([part], miss_value=math.inf), index.score(x[:4]))


def test_largest_hit_distance_is_the_oracles_edge_of_the_hits(rng):
    """The largest per-table distance over the tables where the rows' buckets exist (tests/oracle.py's
    tables), in each mode; as miss_value it scores a query that misses every table at that edge."""
    import oracle

    x = clustered(rng, 400, 16)
    index = LearnableLSHIndex(16, n_tables=3, n_bits=10).add(x)
    w = index.encoder.weight.detach().numpy()
    tables = oracle.build(oracle.encode(x, w, 3, 10))
    q = np.concatenate([x[:50], 5 * rng.standard_normal((30, 16)).astype(np.float32)])
    codes = oracle.encode(q, w, 3, 10)
    for mode in ("mean", "light", "squared"):
        d = oracle.table_distances(tables, codes, mode=mode, miss_value=np.inf)
        want = d[np.isfinite(d)].max()
        assert index.largest_hit_distance(q, mode) == pytest.approx(want, rel=1e-5, abs=1e-6)
    edge = index.largest_hit_distance(x)
    edged = index.empty_like(miss_value=edge).add(x)
    far = 50 * rng.standard_normal((200, 16)).astype(np.float32)
    missed = edged.query_bucket_sizes(far).sum(axis=1) == 0
    assert missed.any() and np.all(edged.score(far)[missed] == np.float32(edge))
    with pytest.raises(llsh_index.InvalidInputError, match="miss every table"):
        index.largest_hit_distance(far[missed][:3])
    with pytest.raises(llsh_index.NotFittedError):
        LearnableLSHIndex(16).largest_hit_distance(x)
