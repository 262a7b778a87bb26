"""GPU variants of the reliability tests: inputs on the wrong device, concurrent scoring, files
saved on the GPU, determinism, and the index's GPU code paths (several add() calls, float16
codes, statistics-only tables, merges) against the same index on the CPU.  Marked `gpu`;
skipped where no CUDA device and backend exist.

CPU and GPU indexes are compared on "exact" data: small integer features and hash weights on a
1/256 grid make every logit exact in float32 whatever the GEMM's summation order (TF32 too), so
both devices give the same keys bit for bit.  On real-valued data a logit within rounding of 0
can flip one key bit between devices and move an item to another bucket.
"""
import threading

import numpy as np
import pytest

import llsh_index
from llsh_index import DeviceMismatchError, InvalidInputError, LearnableLSHIndex, _engine

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not llsh_index.cuda_available(),
                                 reason=f"no CUDA engine here: {llsh_index.cuda_available(verbose=True)[1]}")]

DIM = 64  # a power of 2: the row mean of integer features is exact


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return (rng.integers(-8, 9, (3000, DIM)).astype(np.float32),
            rng.integers(-8, 9, (500, DIM)).astype(np.float32))


def exact_index(**kw) -> LearnableLSHIndex:
    """A CPU index whose hash weights are rounded to multiples of 1/256 (see the module docstring)."""
    kw.setdefault("n_tables", 4)
    kw.setdefault("n_bits", 16)
    index = LearnableLSHIndex(DIM, **kw)
    w = index.encoder.weight.data
    w.copy_(torch.round(w * 256) / 256)
    return index


def cuda(x):
    return torch.from_numpy(x).cuda()


def test_wrong_device_inputs_raise(data):
    x, q = data
    gpu = exact_index().to("cuda")
    with pytest.raises(DeviceMismatchError, match="cuda"):
        gpu.add(x)  # numpy input to a GPU index
    gpu.add(cuda(x))
    cpu = exact_index().add(x)
    with pytest.raises(DeviceMismatchError, match="cpu"):
        cpu.score(cuda(q))


def test_gpu_rejects_rows_whose_variance_overflows(data):
    """A finite row whose float32 sum of squares overflows is rejected on the GPU as on the CPU, not
    hashed with rstd = 0 into all-zero logits (a silent score)."""
    x, q = data
    bad = q[:10].copy()
    bad[4, ::2], bad[4, 1::2] = 1e20, -1e20
    with pytest.raises(InvalidInputError, match="row 4"):
        exact_index().add(x).score(bad)
    with pytest.raises(InvalidInputError, match="row 4"):
        exact_index().to("cuda").add(cuda(x)).score(cuda(bad))


def test_gpu_scores_equal_cpu_and_survive_save(data, tmp_path):
    x, q = data
    cpu = exact_index().add(x)
    gpu = exact_index().to("cuda").add(cuda(x))
    np.testing.assert_array_equal(gpu.hash_keys(cuda(q)).cpu().numpy(), cpu.hash_keys(q))
    for mode in ("mean", "light", "squared"):
        got = gpu.score(cuda(q), mode=mode).cpu().numpy()
        np.testing.assert_allclose(got, cpu.score(q, mode=mode), rtol=1e-5, atol=1e-5)
    gpu.save(str(tmp_path / "g.llsh"))
    back = LearnableLSHIndex.load(str(tmp_path / "g.llsh"))
    np.testing.assert_allclose(back.score(q), cpu.score(q), rtol=1e-5, atol=1e-5)
    on_gpu = LearnableLSHIndex.load(str(tmp_path / "g.llsh"), device="cuda")
    np.testing.assert_allclose(on_gpu.score(cuda(q)).cpu().numpy(), cpu.score(q), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("code_dtype", ["float32", "float16"])
@pytest.mark.parametrize("store_codes", [True, False])
def test_gpu_index_paths_match_cpu(data, code_dtype, store_codes):
    """Two add() calls (GPU row concatenation, or the statistics merge), float16 storage, a merge of
    two GPU shards, and .to() both ways, against the same calls on the CPU."""
    x, q = data
    # codes agree to float32 rounding (the devices' sigmoid and rsqrt differ in the last bit), so
    # about 1 in 10^4 float16 codes rounds to the neighbouring float16 (2^-11 away near 0.5)
    tol = 1e-5 if code_dtype == "float32" else 2e-3
    mode = "mean" if store_codes else "light"
    kw = dict(code_dtype=code_dtype, store_codes=store_codes, mode=mode, batch_size=700)
    cpu = exact_index(**kw).add(x[:1800]).add(x[1800:])
    gpu = exact_index(**kw).to("cuda").add(cuda(x[:1800])).add(cuda(x[1800:]))
    _engine.ensure_statistics(cpu._tables)  # the CPU add() defers them; the GPU build computes them
    for k, v in cpu._tables.items():
        if k == "n_items" or v is None:
            assert gpu._tables[k] == v, k
            continue
        got = gpu._tables[k]
        assert isinstance(got, torch.Tensor) and got.is_cuda, k
        got = got.cpu().numpy()
        assert got.dtype == v.dtype and got.shape == v.shape, k
        if k in ("codes", "bucket_sum", "bucket_sqnorm"):
            np.testing.assert_allclose(got.astype(np.float64), v.astype(np.float64), rtol=tol, atol=tol, err_msg=k)
        else:
            np.testing.assert_array_equal(got, v, err_msg=k)
    modes = (["mean"] if store_codes else []) + ["light", "squared"]
    for m in modes:
        np.testing.assert_allclose(gpu.score(cuda(q), mode=m).cpu().numpy(), cpu.score(q, mode=m),
                                   rtol=tol, atol=tol, err_msg=m)
    a = exact_index(**kw).to("cuda").add(cuda(x[:1000]))
    b = a.empty_like()
    b.add(cuda(x[1000:]))
    merged = LearnableLSHIndex.merge_all([a, b])
    assert merged.device == "cuda" and isinstance(merged._tables["keys"], torch.Tensor)
    single = exact_index(**kw).add(x)
    for m in modes:
        np.testing.assert_allclose(merged.score(cuda(q), mode=m).cpu().numpy(), single.score(q, mode=m),
                                   rtol=tol, atol=tol, err_msg=f"merged, {m}")
    # merging into an empty index on the other device moves the tables onto that device
    onto_cpu = exact_index(**kw).merge(gpu)
    assert isinstance(onto_cpu._tables["keys"], np.ndarray)
    onto_gpu = exact_index(**kw).to("cuda").merge(cpu)
    assert onto_gpu._tables["keys"].is_cuda
    np.testing.assert_allclose(onto_cpu.score(q), cpu.score(q), rtol=tol, atol=tol)
    np.testing.assert_allclose(onto_gpu.score(cuda(q)).cpu().numpy(), cpu.score(q), rtol=tol, atol=tol)
    back = gpu.to("cpu")
    assert isinstance(back._tables["keys"], np.ndarray)
    np.testing.assert_allclose(back.score(q), cpu.score(q), rtol=tol, atol=tol)


def test_concurrent_gpu_scores_equal_serial(data):
    x, q = data
    gpu = exact_index().to("cuda").add(cuda(x))
    qt = cuda(q)
    serial = gpu.score(qt).cpu().numpy()
    out = [None] * 4

    def work(i):
        out[i] = gpu.score(qt).cpu().numpy()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for o in out:
        np.testing.assert_array_equal(o, serial)


def test_gpu_build_is_deterministic(data):
    x, _ = data
    a = exact_index().to("cuda").add(cuda(x))
    b = exact_index().to("cuda").add(cuda(x))
    for k in ("keys", "table_start", "offsets", "ids", "codes", "bucket_sum", "bucket_sqnorm"):
        assert torch.equal(a._tables[k].cpu(), b._tables[k].cpu()), k


def test_gpu_codes_do_not_depend_on_the_batch():
    """On the GPU too, a row's code and key do not depend on its batch: rows alone, in batches of 2-17
    (padded to the GEMM's 16 rows) and in one batch of 600, on real-valued data, with rows that take
    the explicit LayerNorm (far from the origin, constant).  cuBLAS may pick other kernels for other
    row counts; this says whether the ones it picks round alike."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((600, 96)) * rng.uniform(0.1, 10, (600, 1))).astype(np.float32)
    x[3] += 100.0
    x[5] = 0.25
    index = LearnableLSHIndex(96, n_tables=4, n_bits=24, seed=1).to("cuda")
    t = cuda(x)
    codes, keys = index.encode(t).cpu().numpy(), index.hash_keys(t).cpu().numpy()
    for size in (1, 2, 3, 15, 16, 17, 64, 300):
        for i in [*range(0, 600 - size + 1, 97), 2, 3, 4, 5]:
            part = t[i:i + size]
            np.testing.assert_array_equal(index.encode(part).cpu().numpy(), codes[i:i + size], err_msg=f"{size} at {i}")
            np.testing.assert_array_equal(index.hash_keys(part).cpu().numpy(), keys[i:i + size])


@pytest.mark.parametrize("video", [False, True])
@pytest.mark.parametrize("mode,probes", [("mean", (1, 0, "min")), ("light", (3, 20, "min")),
                                         ("squared", (1, 12, "mean"))])
def test_detector_on_the_gpu_equals_the_cpu(data, monkeypatch, video, mode, probes):
    """LLSHDetector(device="cuda"): X copied over, tables on the GPU, the leave-one-out arithmetic on
    the host; the same calibration and scores as on the CPU (hash weights on the exact grid)."""
    from llsh_index.sklearn import LLSHDetector

    make = LearnableLSHIndex._make_encoder

    def on_the_grid(self, dim):
        make(self, dim)
        w = self.encoder.weight.data
        w.copy_(torch.round(w * 256) / 256)

    monkeypatch.setattr(LearnableLSHIndex, "_make_encoder", on_the_grid)
    x, q = data
    x = x[:600]
    vids = np.repeat(np.arange(6), 100) if video else None
    n_probes, miss_probes, reduce = probes
    kw = dict(train=False, n_tables=4, n_bits=16, mode=mode, n_probes=n_probes, miss_probes=miss_probes,
              reduce=reduce, contamination=0.1)
    cpu = LLSHDetector(**kw).fit(x, video_ids=vids)
    gpu = LLSHDetector(device="cuda", **kw).fit(x, video_ids=vids)
    assert gpu.index_.device == "cuda" and _engine.on_device(gpu.index_._tables["keys"])
    np.testing.assert_allclose(gpu.held_out_scores_, cpu.held_out_scores_, rtol=1e-5, atol=1e-5)
    assert gpu.offset_ == pytest.approx(cpu.offset_, rel=1e-5, abs=1e-5)
    got = gpu.score_samples(q)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, cpu.score_samples(q), rtol=1e-5, atol=1e-5)
    # trained on the GPU too (values differ from the CPU's: another RNG stream and GEMM)
    trained = LLSHDetector(device="cuda", n_tables=4, n_bits=16, iterations=2, batch_size=16, queue_size=32,
                           max_offset=5).fit(x, video_ids=np.repeat(np.arange(6), 100))
    assert trained.index_.is_trained and np.isfinite(trained.score_samples(q)).all()


def test_stream_scorer_on_the_gpu_equals_the_cpu(data):
    """StreamScorer over an index on the GPU: the snippet features go to the device, the scores come
    back; the same smoothed scores as over the CPU index (integer features, weights on the grid)."""
    from llsh_index.stream import StreamScorer
    from llsh_index.video import FeatureExtractor

    class Pixels(FeatureExtractor):  # T = 1: a frame's first 64 values as small integers (exact logits)
        name, version, dim = "pixels", "1", DIM

        def extract(self, frames):
            f = np.asarray(frames).reshape(len(frames), -1)[:, :DIM].astype(np.int64)
            return (f % 17 - 8).astype(np.float32)

    x, _ = data
    cpu = exact_index().add(x)
    gpu = exact_index().to("cuda").add(cuda(x))
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (120, 8, 8, 3), dtype=np.uint8)
    got = []
    for index in (cpu, gpu):
        scorer = StreamScorer(index, Pixels(), T=1, sigma=4)
        outs = [scorer.push(frames[i:i + 5]) for i in range(0, 120, 5)] + [scorer.flush()]
        got.append(np.concatenate([o.scores for o in outs]))
        assert np.concatenate([o.frames for o in outs]).tolist() == list(range(120))
    np.testing.assert_allclose(got[1], got[0], rtol=1e-5, atol=1e-5)


def test_gpu_occupancy_equals_the_cpu(data):
    """stats() and query_bucket_sizes() of a GPU index (its tables and keys on the device) and of a
    ShardedIndex of GPU shards equal the CPU index's on exact data."""
    from llsh_index import ShardedIndex

    x, q = data
    cpu = exact_index().add(x)
    gpu = exact_index().to("cuda").add(cuda(x))
    assert gpu.stats() == cpu.stats()
    np.testing.assert_array_equal(gpu.query_bucket_sizes(cuda(q)), cpu.query_bucket_sizes(q))
    sh = ShardedIndex(exact_index(), devices=["cuda:0"], n_shards=3).add(x)
    assert sh.stats() == cpu.stats()
    np.testing.assert_array_equal(sh.query_bucket_sizes(q), cpu.query_bucket_sizes(q))


@pytest.mark.parametrize("n_bits", [3, 16])  # coarse tables take search()'s dense path, finer ones its gathers
def test_gpu_search_and_remove_ids_equal_the_cpu(data, n_bits):
    """search() (torch ops on the device) and remove_ids() (host compaction, tables sent back) give
    on the GPU what they give on the CPU; the results stay on the device."""
    x, q = data
    cpu = exact_index(n_bits=n_bits).add(x)
    gpu = exact_index(n_bits=n_bits).to("cuda").add(cuda(x))
    d, i = gpu.search(cuda(q), 5)
    assert d.is_cuda and i.is_cuda
    want = cpu.search(q, 5)
    np.testing.assert_allclose(d.cpu().numpy(), want[0], rtol=1e-5, atol=1e-6)
    # ids agree but where two candidates are within the devices' rounding (sigmoid ulps) of each other
    gap = np.diff(np.where(np.isinf(want[0]), 1e30, want[0]), axis=1) > 1e-4
    sure = np.c_[gap, np.ones((len(q), 1), bool)] & np.c_[np.ones((len(q), 1), bool), gap]
    np.testing.assert_array_equal(i.cpu().numpy()[sure], want[1][sure])
    drop = np.r_[0:200, 1000:1500]
    assert gpu.remove_ids(drop) == cpu.remove_ids(drop) == 700
    assert gpu._tables["codes"].is_cuda and gpu._tables["bucket_sum"] is not None
    np.testing.assert_allclose(gpu.score(cuda(q)).cpu().numpy(), cpu.score(q), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gpu.search(cuda(q), 3)[0].cpu().numpy(), cpu.search(q, 3)[0], rtol=1e-5, atol=1e-6)
