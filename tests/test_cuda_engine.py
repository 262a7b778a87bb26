"""CUDA engine (llsh_index._cuda_engine) against a NumPy oracle and the CPU engine.

Every test needs a CUDA device and an llsh_index._C built with LLSH_WITH_CUDA; the whole module
is skipped otherwise.  Outputs and scratch buffers are poisoned (NaN / 0xFF) before every kernel
run, so an element a kernel forgets to write fails the comparison.
"""
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _skip_reason():
    try:
        from llsh_index import _C
    except Exception as e:  # pragma: no cover
        return f"llsh_index._C does not import: {e}"
    if not torch.cuda.is_available():
        return "torch.cuda is not available (no GPU or a CPU-only torch)"
    built, n_devices, why = _C.cuda_status()
    if not built or n_devices == 0:
        return f"llsh_index CUDA engine unavailable: {why}"
    return None


_REASON = _skip_reason()
if _REASON:
    pytest.skip(_REASON, allow_module_level=True)

from llsh_index import DeviceMismatchError, _C  # noqa: E402
from llsh_index import _cuda_engine as ce  # noqa: E402

pytestmark = pytest.mark.gpu
DEV = torch.device("cuda", torch.cuda.current_device())
TOL = 1e-5


@pytest.fixture(autouse=True)
def _poison():
    old = ce.set_poison(True)
    yield
    ce.set_poison(old)


# ------------------------------------------------------------------------------------ oracle
def oracle_build(keys, codes, ids):
    """Tables by (key, id) order per table, in plain NumPy (float64 statistics)."""
    b, n, r = codes.shape
    out = {"keys": [], "table_start": [0], "offsets": [], "ids": [], "codes": [], "bucket_sum": [],
           "bucket_sqnorm": []}
    row = 0
    for j in range(b):
        order = np.lexsort((ids[j], keys[j]))
        k, c, i = keys[j][order], codes[j][order], ids[j][order]
        uniq, start, count = np.unique(k, return_index=True, return_counts=True)
        c64 = c.astype(np.float64)
        for u, s, cnt in zip(uniq, start, count):
            out["keys"].append(u)
            out["offsets"].append(row + s)
            out["bucket_sum"].append(c64[s:s + cnt].sum(0))
            out["bucket_sqnorm"].append((c64[s:s + cnt] ** 2).sum())
        row += n
        out["table_start"].append(len(out["keys"]))
        out["ids"].append(i)
        out["codes"].append(c)
    out["offsets"].append(row)
    return {
        "keys": np.asarray(out["keys"], dtype=np.uint64),
        "table_start": np.asarray(out["table_start"], dtype=np.int64),
        "offsets": np.asarray(out["offsets"], dtype=np.int64),
        "ids": np.concatenate(out["ids"]).astype(np.int64) if b else np.zeros(0, np.int64),
        "codes": np.concatenate(out["codes"]).reshape(b * n, r) if b else np.zeros((0, r), codes.dtype),
        "bucket_sum": np.asarray(out["bucket_sum"], dtype=np.float64).reshape(-1, r),
        "bucket_sqnorm": np.asarray(out["bucket_sqnorm"], dtype=np.float64),
    }


def oracle_lookup(keys, codes, q_codes, q_keys, mode, miss):
    """The paper's scoring from a dict of buckets per table: per (query, table) the mean L2 distance to
    the bucket (mode 0), L2 to the bucket mean (1) or mean squared L2 (2); min over tables."""
    b, n, r = codes.shape
    buckets = []
    for j in range(b):
        d = {}
        for i in range(n):
            d.setdefault(int(keys[j, i]), []).append(i)
        buckets.append({k: codes[j, v].astype(np.float64) for k, v in d.items()})
    M = q_codes.shape[0]
    out = np.full((M, b), miss, dtype=np.float64)
    for m in range(M):
        for j in range(b):
            bucket = buckets[j].get(int(q_keys[m, j]))
            if bucket is None:
                continue
            q = q_codes[m, j].astype(np.float64)
            if mode == 0:
                out[m, j] = np.sqrt(((bucket - q) ** 2).sum(1)).mean()
            elif mode == 1:
                out[m, j] = np.sqrt(((q - bucket.mean(0)) ** 2).sum())
            else:
                out[m, j] = ((bucket - q) ** 2).sum(1).mean()
    return out, out.min(1)


def keys_of(codes):
    c = np.ascontiguousarray(codes, dtype=np.float32)
    return _C.binarize_cpu(c)


# --------------------------------------------------------------------------------- test data
def make_case(b, n, r, kind, dtype, ids_kind, seed, n_queries=64):
    rng = np.random.default_rng(seed)
    if kind == "giant":  # every item of a table in one bucket
        codes = 0.55 + 0.4 * rng.random((b, n, r))
    elif kind == "unique":  # all keys distinct within a table
        assert 2 ** r >= n
        bits = np.stack([rng.permutation(2 ** r)[:n] for _ in range(b)]).astype(np.uint64)
        on = ((bits[..., None] >> np.arange(r, dtype=np.uint64)) & np.uint64(1)).astype(bool)
        codes = np.where(on, 0.75, 0.25) + rng.uniform(-0.2, 0.2, (b, n, r))
    else:  # "proto": clustered around a few prototypes, noise flips bits near 0.5
        protos = rng.random((max(2, n // 40), r))
        lab = rng.integers(0, len(protos), (b, n))
        codes = np.clip(protos[lab] + rng.normal(0, 0.08, (b, n, r)), 0, 1)
    codes = codes.astype(dtype)
    keys = keys_of(codes.astype(np.float32))
    if ids_kind == "arange":
        ids = np.broadcast_to(np.arange(n, dtype=np.int64), (b, n)).copy()
    elif ids_kind == "shuffled":
        ids = np.stack([rng.permutation(n) for _ in range(b)]).astype(np.int64) + 1000
    else:  # negative, large and unordered
        ids = np.stack([rng.permutation(n) for _ in range(b)]).astype(np.int64) * 7919 - 10 ** 12
    # queries: perturbed stored codes (hits) with ~1/4 of the keys replaced by random keys (misses)
    src = rng.integers(0, max(n, 1), n_queries)
    qc = np.empty((n_queries, b, r), np.float32)
    for j in range(b):
        base = codes[j, src].astype(np.float32) if n else rng.random((n_queries, r))
        qc[:, j] = np.clip(base + rng.normal(0, 0.05, (n_queries, r)), 0, 1)
    qk = keys_of(qc)
    miss = rng.random((n_queries, b)) < 0.25
    rnd = rng.integers(0, 2 ** 63, (n_queries, b), dtype=np.int64).astype(np.uint64)
    if r < 64:
        rnd &= np.uint64((1 << r) - 1)
    else:
        rnd |= np.uint64(1 << 63)
    qk = np.where(miss, rnd, qk)
    return keys, codes, ids, qc, qk


def to_dev(a):
    return torch.from_numpy(np.ascontiguousarray(a)).to(DEV)


def cpu_build(keys, codes, ids, keep_codes=True):
    half = codes.dtype == np.float16
    t = _C.build_tables_cpu(keys, codes.view(np.uint16) if half else codes, ids, keep_codes=keep_codes)
    if half and t["codes"] is not None:
        t["codes"] = t["codes"].view(np.float16)
    return t


def cpu_lookup(t, n_items, qc, qk, mode, miss, partial=False):
    """The CPU engine's lookup: (distances, n_visited), or with partial (distances, n_visited, sums, counts)."""
    codes = t["codes"]
    if codes is not None and codes.dtype == np.float16:
        codes = codes.view(np.uint16)
    return _C.lookup_cpu(t["keys"], t["table_start"], t["offsets"], codes, t["bucket_sum"], t["bucket_sqnorm"],
                         n_items, qc, qk, mode, float(miss), *((0, True) if partial else ()))


def host(t):
    return None if t is None else t.cpu().numpy()


def assert_tables_equal(gpu, ref, dtype, keep_codes=True):
    assert set(gpu) == set(ref)
    for k in ("keys", "table_start", "offsets", "ids"):
        g = host(gpu[k])
        assert g.dtype == ref[k].dtype and g.shape == ref[k].shape, k
        np.testing.assert_array_equal(g, ref[k], err_msg=k)
    if keep_codes:
        g = host(gpu["codes"])
        assert g.dtype == dtype and g.shape == ref["codes"].shape
        np.testing.assert_array_equal(g.view(np.uint8), ref["codes"].view(np.uint8))  # bit-exact, NaN-safe
    else:
        assert gpu["codes"] is None
    for k in ("bucket_sum", "bucket_sqnorm"):
        g = host(gpu[k])
        assert g.dtype == np.float64 and g.shape == ref[k].shape, k
        np.testing.assert_allclose(g, ref[k], rtol=1e-9, atol=1e-9, err_msg=k)


CASES = [
    # b, n, r, kind, dtype, ids
    (4, 3000, 32, "proto", np.float32, "arange"),
    (4, 3000, 32, "proto", np.float16, "shuffled"),
    (2, 6000, 8, "giant", np.float32, "arange"),        # one bucket > kLookupBigBucket rows
    (2, 5000, 64, "giant", np.float16, "negative"),
    (3, 3000, 16, "unique", np.float32, "negative"),    # all keys distinct
    (3, 2000, 64, "proto", np.float32, "shuffled"),     # r = 64, keys with the top bit set
    (3, 2000, 64, "proto", np.float16, "arange"),
    (4, 2000, 1, "proto", np.float32, "shuffled"),      # r = 1: two buckets of ~1000 rows
    (1, 2500, 24, "proto", np.float32, "arange"),       # b = 1
    (5, 700, 33, "proto", np.float16, "negative"),      # odd r > 32, 66-byte rows
    (2, 4100, 3, "proto", np.float32, "arange"),        # 12-byte rows
    (6, 1, 5, "proto", np.float32, "arange"),           # one item
]


def _id(c):
    b, n, r, kind, dtype, ids = c
    return f"b{b}-n{n}-r{r}-{kind}-{np.dtype(dtype).name}-{ids}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_build_and_lookup_match_cpu_and_oracle(case):
    b, n, r, kind, dtype, ids_kind = case
    keys, codes, ids, qc, qk = make_case(b, n, r, kind, dtype, ids_kind, seed=zlib.crc32(_id(case).encode()))
    ref = cpu_build(keys, codes, ids)
    orc = oracle_build(keys, codes, ids)
    for k in ("keys", "table_start", "offsets", "ids", "codes"):
        np.testing.assert_array_equal(ref[k], orc[k], err_msg=f"CPU engine vs oracle: {k}")

    g = ce.build_tables(to_dev(keys), to_dev(codes), to_dev(ids))
    assert_tables_equal(g, ref, dtype)
    gs = ce.build_tables(to_dev(keys), to_dev(codes), to_dev(ids), keep_codes=False)
    assert_tables_equal(gs, cpu_build(keys, codes, ids, keep_codes=False), dtype, keep_codes=False)

    qc_d, qk_d = to_dev(qc), to_dev(qk)
    for mode in (0, 1, 2):
        miss = 1e6 + mode
        want_cpu, n_cmp = cpu_lookup(ref, n, qc, qk, mode, miss)
        want, want_min = oracle_lookup(keys, codes, qc, qk, mode, miss)
        out, out_min, visited = ce.lookup(g, n, qc_d, qk_d, mode, miss, return_min=True, return_visited=True)
        out, out_min, visited = host(out), host(out_min), host(visited)
        assert out.dtype == np.float32 and out.shape == (qc.shape[0], b)
        np.testing.assert_allclose(out, want_cpu, rtol=TOL, atol=TOL, err_msg=f"mode {mode} vs CPU engine")
        np.testing.assert_allclose(out, want, rtol=TOL, atol=TOL, err_msg=f"mode {mode} vs oracle")
        np.testing.assert_allclose(out_min, want_min, rtol=TOL, atol=TOL, err_msg=f"mode {mode} min")
        assert int(visited.sum()) == int(n_cmp)
        assert (out[(visited == 0)] == np.float32(miss)).all()
        if mode:
            out_s = host(ce.lookup(gs, n, qc_d, qk_d, mode, miss))
            np.testing.assert_allclose(out_s, want_cpu, rtol=TOL, atol=TOL, err_msg=f"mode {mode} stats-only")
        # the CPU engine's tables moved to the GPU give the same distances
        ref_d = ce.tables_to_device(ref, DEV)
        np.testing.assert_allclose(host(ce.lookup(ref_d, n, qc_d, qk_d, mode, miss)), want_cpu, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_partial_output_matches_cpu(case):
    """return_partial: the shard partial sums of lookup_cpu(partial=True), every element written
    (outputs are poisoned), big buckets included; with and without the other extras."""
    b, n, r, kind, dtype, ids_kind = case
    keys, codes, ids, qc, qk = make_case(b, n, r, kind, dtype, ids_kind, seed=zlib.crc32(_id(case).encode()) + 1)
    ref = cpu_build(keys, codes, ids)
    g = ce.build_tables(to_dev(keys), to_dev(codes), to_dev(ids))
    gs = ce.build_tables(to_dev(keys), to_dev(codes), to_dev(ids), keep_codes=False)
    qc_d, qk_d = to_dev(qc), to_dev(qk)
    for mode in (0, 1, 2):
        want, _, want_sum, want_count = cpu_lookup(ref, n, qc, qk, mode, 3.0, partial=True)
        out, psum, pcount = ce.lookup(g, n, qc_d, qk_d, mode, 3.0, return_partial=True)
        assert psum.dtype == torch.float64 and pcount.dtype == torch.int64 and psum.shape == (qc.shape[0], b)
        np.testing.assert_array_equal(host(pcount), want_count, err_msg=f"mode {mode} counts")
        np.testing.assert_allclose(host(psum), want_sum, rtol=TOL, atol=TOL, err_msg=f"mode {mode} sums")
        np.testing.assert_allclose(host(out), want, rtol=TOL, atol=TOL, err_msg=f"mode {mode} distances")
        miss = want_count == 0
        assert (host(psum)[miss] == 0).all()
        # the sum over a bucket divided by its size is the distance the same call returns
        hit = ~miss
        np.testing.assert_allclose(host(psum)[hit] / host(pcount)[hit], host(out)[hit], rtol=1e-6, atol=1e-6)
        out2, mn, vis, psum2, pcount2 = ce.lookup(g, n, qc_d, qk_d, mode, 3.0, return_min=True, return_visited=True,
                                                  return_partial=True)
        assert torch.equal(psum2, psum) and torch.equal(pcount2, pcount) and torch.equal(out2, out)
        if mode:
            _, ps, pc = ce.lookup(gs, n, qc_d, qk_d, mode, 3.0, return_partial=True)
            np.testing.assert_array_equal(host(pc), want_count)
            np.testing.assert_allclose(host(ps), want_sum, rtol=TOL, atol=TOL)
    if kind == "giant":  # the big-bucket kernel wrote these sums
        assert (want_count > 2048).any()


def test_input_order_does_not_matter():
    keys, codes, ids, _, _ = make_case(3, 2000, 12, "proto", np.float32, "arange", seed=7)
    perm = np.random.default_rng(1).permutation(2000)
    a = ce.build_tables(to_dev(keys), to_dev(codes), to_dev(ids))
    b = ce.build_tables(to_dev(keys[:, perm]), to_dev(codes[:, perm]), to_dev(ids[:, perm]))
    for k in ("keys", "table_start", "offsets", "ids", "codes"):
        assert torch.equal(a[k].cpu(), b[k].cpu()), k
    for k in ("bucket_sum", "bucket_sqnorm"):
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-9)


def test_empty_tables_and_queries():
    keys = np.zeros((3, 0), np.uint64)
    codes = np.zeros((3, 0, 8), np.float32)
    ids = np.zeros((3, 0), np.int64)
    g = ce.build_tables(to_dev(keys), to_dev(codes), to_dev(ids))
    assert_tables_equal(g, cpu_build(keys, codes, ids), np.float32)
    qc = np.random.default_rng(0).random((5, 3, 8)).astype(np.float32)
    out = host(ce.lookup(g, 0, to_dev(qc), to_dev(keys_of(qc)), 0, 7.0))
    assert (out == 7.0).all()
    empty = ce.lookup(g, 0, torch.zeros((0, 3, 8), device=DEV), torch.empty((0, 3), dtype=torch.uint64, device=DEV),
                      0, 7.0)
    assert empty.shape == (0, 3)
    _, psum, pcount = ce.lookup(g, 0, to_dev(qc), to_dev(keys_of(qc)), 0, 7.0, return_partial=True)
    assert (host(psum) == 0).all() and (host(pcount) == 0).all()


@pytest.mark.parametrize("r", [1, 3, 7, 16, 31, 32, 33, 50, 64])
def test_binarize(r):
    rng = np.random.default_rng(r)
    x = rng.normal(0, 2, (257, 3, r)).astype(np.float32)
    x[0, 0, :] = 0.0  # logit 0 -> code 0.5 -> bit 1
    x[1, 0, :] = np.float32(-1e-30)
    codes, keys = ce.binarize(to_dev(x), from_logits=False)
    assert keys.dtype == torch.uint64 and keys.shape == (257, 3)
    np.testing.assert_array_equal(host(keys), keys_of(x))
    codes, keys = ce.binarize(to_dev(x), from_logits=True)
    c = host(codes)
    torch.testing.assert_close(codes, torch.sigmoid(to_dev(x)), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(host(keys), keys_of(c))  # keys agree with the written codes
    np.testing.assert_array_equal(host(keys)[0, 0], np.uint64((1 << r) - 1 if r < 64 else 2 ** 64 - 1))
    xd = to_dev(x)
    codes2, keys2 = ce.binarize(xd, from_logits=True, inplace=True)
    assert codes2.data_ptr() == xd.data_ptr()
    assert torch.equal(codes2, codes) and torch.equal(keys2.cpu(), keys.cpu())


def test_min_over_tables_propagates_nan():
    """return_min is the min over the [M, b] output as torch.min and numpy's min take it: a NaN distance
    (a NaN query code) makes the row's min NaN instead of another table's distance (fminf)."""
    keys, codes, ids, qc, qk = make_case(4, 500, 16, "proto", np.float32, "arange", seed=13)
    g = ce.build_tables(to_dev(keys), to_dev(codes), to_dev(ids))
    qc = qc.copy()
    qc[::3, 1, 0] = np.nan  # table 1 of every third query
    for mode in (0, 1):
        out, mn = ce.lookup(g, 500, to_dev(qc), to_dev(qk), mode, 1e6, return_min=True)
        want = out.min(dim=1).values
        assert bool(torch.isnan(mn).any()) and not bool(torch.isnan(mn[1::3]).any())
        np.testing.assert_array_equal(host(mn), host(want), err_msg=f"mode {mode}")  # NaN where want is NaN


def test_non_default_stream():
    keys, codes, ids, qc, qk = make_case(4, 3000, 32, "proto", np.float32, "shuffled", seed=3)
    ref = host(ce.lookup(ce.build_tables(to_dev(keys), to_dev(codes), to_dev(ids)), 3000, to_dev(qc), to_dev(qk),
                         0, 9.0))
    s = torch.cuda.Stream()
    k, c, i, q, qkd = (to_dev(a) for a in (keys, codes, ids, qc, qk))
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        t = ce.build_tables(k, c, i)
        out = ce.lookup(t, 3000, q, qkd, 0, 9.0)
    torch.cuda.current_stream().wait_stream(s)
    np.testing.assert_array_equal(host(out), ref)


def test_errors():
    keys, codes, ids, qc, qk = make_case(2, 100, 8, "proto", np.float32, "arange", seed=5)
    bad = keys.copy()
    bad[0, 0] |= np.uint64(1 << 40)
    with pytest.raises(ValueError):
        ce.build_tables(to_dev(bad), to_dev(codes), to_dev(ids))
    g = ce.build_tables(to_dev(keys), to_dev(codes), to_dev(ids), keep_codes=False)
    with pytest.raises(ValueError):
        ce.lookup(g, 100, to_dev(qc), to_dev(qk), 0, 1.0)
    with pytest.raises(TypeError):
        ce.build_tables(to_dev(keys), to_dev(codes.astype(np.float64)), to_dev(ids))
    with pytest.raises(ValueError):
        ce.build_tables(torch.from_numpy(keys), torch.from_numpy(codes), torch.from_numpy(ids))


def test_cupy_inputs():
    cp = pytest.importorskip("cupy")
    keys, codes, ids, qc, qk = make_case(3, 1500, 20, "proto", np.float16, "shuffled", seed=11)
    ref = cpu_build(keys, codes, ids)
    g = ce.build_tables(cp.asarray(keys), cp.asarray(codes), cp.asarray(ids))
    assert_tables_equal(g, ref, np.float16)
    want, _ = cpu_lookup(ref, 1500, qc, qk, 0, 5.0)
    out = ce.lookup(g, 1500, cp.asarray(qc), cp.asarray(qk), 0, 5.0)
    np.testing.assert_allclose(host(out), want, rtol=TOL, atol=TOL)
    c, k = ce.binarize(cp.asarray(qc), from_logits=False)
    np.testing.assert_array_equal(host(k), keys_of(qc))
    # non-contiguous and negatively strided CuPy views: copied, never handed to DLPack as they are
    d = cp.asarray(qc)
    for sl in ((slice(None, None, -1),), (slice(None), slice(None, None, -1)), (slice(None, None, 2), slice(1, None))):
        c, k = ce.binarize(d[sl], from_logits=False)
        np.testing.assert_array_equal(host(k), keys_of(np.ascontiguousarray(qc[sl])))
    with pytest.raises(DeviceMismatchError):
        ce.binarize(qc[::-1])  # host data, negatively strided: a typed error, not an abort

    class CAIOnly:  # known only through __cuda_array_interface__ (v3, naming its producer's stream)
        def __init__(self, a):
            self.a, self.__cuda_array_interface__ = a, a.__cuda_array_interface__

    producer = cp.cuda.Stream(non_blocking=True)
    with producer:  # written on a side stream; the lookup on torch's stream must wait for it
        big = cp.asarray(np.repeat(qc, 64, axis=0)) * 1
        wrapped = CAIOnly(big)
    c, k = ce.binarize(wrapped, from_logits=False)
    np.testing.assert_array_equal(host(k), keys_of(np.repeat(qc, 64, axis=0)))


# Every kernel caps its grid (a few dozen blocks per SM) and loops over the rest; the cases above fit
# in one pass of each loop on a large GPU.  These sizes make every loop take several passes:
# ~100k (query, table) pairs, over 528 queued big-bucket pairs, 360k binarized rows, 240k buckets.
LOOP_CASES = [
    # b, n, r, kind, dtype, ids, n_queries
    (4, 60000, 20, "unique", np.float32, "shuffled", 25000),
    (2, 6000, 8, "giant", np.float16, "arange", 2000),
]


@pytest.mark.parametrize("case", LOOP_CASES, ids=[_id(c[:6]) + f"-m{c[6]}" for c in LOOP_CASES])
def test_kernel_loops_take_several_passes(case):
    b, n, r, kind, dtype, ids_kind, m = case
    keys, codes, ids, qc, qk = make_case(b, n, r, kind, dtype, ids_kind, seed=zlib.crc32(_id(case[:6]).encode()),
                                         n_queries=m)
    ref = cpu_build(keys, codes, ids)
    g = ce.build_tables(to_dev(keys), to_dev(codes), to_dev(ids))
    assert_tables_equal(g, ref, dtype)
    qc_d, qk_d = to_dev(qc), to_dev(qk)
    for mode in (0, 1, 2):
        want, _, want_sum, want_count = cpu_lookup(ref, n, qc, qk, mode, 7.0, partial=True)
        out, psum, pcount = ce.lookup(g, n, qc_d, qk_d, mode, 7.0, return_partial=True)
        np.testing.assert_allclose(host(out), want, rtol=TOL, atol=TOL, err_msg=f"mode {mode}")
        np.testing.assert_array_equal(host(pcount), want_count, err_msg=f"mode {mode} counts")
        np.testing.assert_allclose(host(psum), want_sum, rtol=TOL, atol=TOL, err_msg=f"mode {mode} sums")
    if kind == "giant":
        assert (want_count > 2048).sum() > 528  # more big-bucket pairs than the big kernel's blocks
    for r_bin in (32, 50):  # rows packed several to a warp / one row over two ballots
        x = np.random.default_rng(r_bin).normal(0, 2, (120000, 3, r_bin)).astype(np.float32)
        codes_d, keys_d = ce.binarize(to_dev(x), from_logits=True)
        np.testing.assert_array_equal(host(keys_d), keys_of(host(codes_d)))
        torch.testing.assert_close(codes_d, torch.sigmoid(to_dev(x)), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_more_than_2_31_code_elements():
    """b*N*r > 2^31: codes beyond element 2^31 are gathered, summed and scanned correctly."""
    b, n, r, P = 2, (1 << 24) + 3, 64, 997
    free = torch.cuda.mem_get_info(DEV)[0]
    if free < 16 * 2 ** 30:
        pytest.skip("needs ~16 GiB of free device memory")
    g = torch.Generator(device=DEV).manual_seed(0)
    protos = torch.where(torch.rand((P, r), device=DEV, generator=g) < 0.5, 0.2, 0.8)
    _, pkeys = ce.binarize(protos.float())
    codes = torch.empty((b, n, r), dtype=torch.float16, device=DEV)
    labels = torch.randint(0, P, (b, n), device=DEV, generator=g)
    for j in range(b):
        codes[j] = (protos[labels[j]] + (torch.rand((n, r), device=DEV, generator=g) - 0.5) * 0.1).half()
    keys = pkeys.view(torch.int64)[labels]
    ids = torch.arange(n, device=DEV).expand(b, n).contiguous()
    t = ce.build_tables(keys, codes, ids)
    assert int(t["offsets"][-1]) == b * n and int(t["table_start"][-1]) == t["keys"].numel()
    ts, off = t["table_start"].cpu(), t["offsets"].cpu()
    for u in (int(ts[1]), int(ts[2]) - 1):  # first and last bucket of the last table
        lo, hi = int(off[u]), int(off[u + 1])
        rows_ids = t["ids"][lo:hi]
        assert bool((rows_ids[1:] > rows_ids[:-1]).all())
        src = codes[1][rows_ids]
        assert torch.equal(t["codes"][lo:hi], src)
        torch.testing.assert_close(t["bucket_sum"][u], src.double().sum(0), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(t["bucket_sqnorm"][u], (src.double() ** 2).sum(), rtol=1e-9, atol=1e-9)
        q = src[:1].float().expand(1, r).clone()
        qc = torch.stack([q[0], q[0]]).unsqueeze(0).contiguous()                 # [1, 2, r]
        qk = t["keys"].view(torch.int64)[u].view(1, 1).expand(1, 2).contiguous()
        out = ce.lookup(t, n, qc, qk, 0, -1.0)
        want = torch.sqrt(((src.double() - q.double()) ** 2).sum(1)).mean()
        assert abs(float(out[0, 1]) - float(want)) <= TOL * max(1.0, float(want))
