"""Dataset layouts and label files (llsh_index.datasets)."""
from pathlib import Path

import numpy as np
import pytest

from llsh_index import datasets as D

from conftest import shared_path as shared


def _touch_frames(folder: Path, n: int, fmt="{:03d}.jpg"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / fmt.format(i)).write_bytes(b"")  # listing only; never decoded here
    return folder


def test_natural_key_orders_numbers():
    names = ["img10.png", "img2.png", "img1.png", "IMG3.png", "a.png"]
    assert sorted(names, key=D.natural_key) == ["a.png", "img1.png", "img2.png", "IMG3.png", "img10.png"]


def test_list_frame_files(tmp_path):
    _touch_frames(tmp_path / "v", 3, "{}.png")
    (tmp_path / "v" / "10.JPG").write_bytes(b"")
    (tmp_path / "v" / "readme.txt").write_text("x")
    (tmp_path / "v" / ".hidden.jpg").write_bytes(b"")
    names = [Path(p).name for p in D.list_frame_files(tmp_path / "v")]
    assert names == ["0.png", "1.png", "2.png", "10.JPG"]


# ----------------------------------------------------------------------------- UCSD Ped2


def test_ped2_real_data():
    root = shared("ped2")
    train = D.load_ped2(root, "training")
    test = D.load_ped2(root, "test")
    assert len(train) == 16 and train.n_frames == 2550 and not train.has_labels
    assert len(test) == 12 and test.n_frames == 2010 and test.has_labels
    assert test.names == [f"{i:02d}" for i in range(1, 13)]
    labels = test.labels_by_video()
    assert sum(int(l.sum()) for l in labels.values()) == 1648
    assert all(l.dtype == np.uint8 and l.size == v.n_frames for v, l in zip(test, labels.values()))
    # test video 01: frames 61..180 (1-based, inclusive) are anomalous
    v1 = test["01"]
    assert v1.n_frames == 180 and v1.labels[:60].sum() == 0 and v1.labels[60:].all()
    assert Path(v1.frame_paths[0]).name == "000.jpg" and Path(v1.frame_paths[-1]).name == "179.jpg"
    assert test["08"].labels.all()  # anomalous from first to last frame


def _fake_ucsd(root: Path, counts, gt_cells, mat_name="ped2.mat"):
    from scipy.io import savemat

    for i, n in enumerate(counts):
        _touch_frames(root / "testing" / "frames" / f"{i + 1:02d}", n)
    _touch_frames(root / "training" / "frames" / "01", 5)
    cells = np.empty((1, len(gt_cells)), dtype=object)
    for i, c in enumerate(gt_cells):
        cells[0, i] = np.asarray(c, dtype=np.float64)
    savemat(str(root / mat_name), {"gt": cells})
    return root


def test_ucsd_labels_single_and_multiple_ranges(tmp_path):
    root = _fake_ucsd(tmp_path / "ped", [10, 8], [[[3], [5]], [[1, 7], [2, 8]]])
    ds = D.load_ped2(root, "testing")
    np.testing.assert_array_equal(ds["01"].labels, [0, 0, 1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(ds["02"].labels, [1, 1, 0, 0, 0, 0, 1, 1])
    assert D.load_ped2(root, "testing", with_labels=False).has_labels is False
    assert len(D.load_ped2(root, "train")) == 1


def test_original_ucsd_layout(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "UCSDped2"
    _touch_frames(root / "Test" / "Test001", 6, "{:03d}.tif")
    _touch_frames(root / "Test" / "Test001_gt", 6, "{:03d}.bmp")  # pixel masks: not a video
    _touch_frames(root / "Train" / "Train001", 4, "{:03d}.tif")
    cells = np.empty((1, 1), dtype=object)
    cells[0, 0] = np.array([[2.0], [3.0]])
    savemat(str(tmp_path / "ped2.mat"), {"gt": cells})
    test = D.load_ped2(root, "test", mat_path=tmp_path / "ped2.mat")
    assert test.names == ["Test001"] and test["Test001"].labels.tolist() == [0, 1, 1, 0, 0, 0]
    assert D.load_ped2(root, "train").names == ["Train001"]


def test_ucsd_label_errors(tmp_path):
    root = _fake_ucsd(tmp_path / "a", [10], [[[3], [12]]])  # range beyond the video
    with pytest.raises(D.DatasetFormatError, match="ped2.mat: video '01': anomalous range .3, 12. .* does not fit 10"):
        D.load_ped2(root, "testing")
    root = _fake_ucsd(tmp_path / "b", [10, 10], [[[3], [5]]])  # one entry for two videos
    with pytest.raises(D.DatasetFormatError, match="1 videos"):
        D.load_ped2(root, "testing")


def test_damaged_label_files_are_dataset_format_errors(tmp_path):
    """A corrupt ped2.mat, string ranges, and empty / truncated / single-array / text label npz files:
    DatasetFormatError naming the file (MatReadError, ValueError, EOFError, BadZipFile and
    TypeError escaped before)."""
    root = _fake_ucsd(tmp_path / "a", [10], [[[3], [5]]])
    (root / "ped2.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(10))
    with pytest.raises(D.DatasetFormatError, match="ped2.mat: cannot be read as a MATLAB file"):
        D.load_ped2(root, "testing")
    from scipy.io import savemat

    cells = np.empty((1, 1), dtype=object)
    cells[0, 0] = np.array(["3", "x"])
    savemat(str(root / "ped2.mat"), {"gt": cells})
    with pytest.raises(D.DatasetFormatError, match="video '01': expected integer frame ranges"):
        D.load_ped2(root, "testing")
    np.savez(tmp_path / "whole.npz", v=np.zeros(100))
    files = {"empty.npz": b"", "text.npz": b"video,frame\n", "truncated.npz": (tmp_path / "whole.npz").read_bytes()[:300]}
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    np.save(tmp_path / "single.npy", np.zeros(3))
    for name in (*files, "single.npy"):
        with pytest.raises(D.DatasetFormatError, match=f"cannot read label file .*{name}"):
            D.load_npz_labels(tmp_path / name)


def test_ped2_missing_paths_are_named(tmp_path):
    with pytest.raises(D.DatasetNotFoundError, match="nowhere") as ei:
        D.load_ped2(tmp_path / "nowhere")
    assert isinstance(ei.value, FileNotFoundError) and ei.value.path.endswith("nowhere")
    (tmp_path / "p").mkdir()
    with pytest.raises(D.DatasetNotFoundError, match=r"testing[/\\]frames"):
        D.load_ped2(tmp_path / "p")
    _touch_frames(tmp_path / "p" / "testing" / "frames" / "01", 3)
    with pytest.raises(D.DatasetNotFoundError, match="ped2.mat"):
        D.load_ped2(tmp_path / "p")
    (tmp_path / "p" / "testing" / "frames" / "02").mkdir()
    with pytest.raises(D.DatasetFormatError, match="no frames"):
        D.load_ped2(tmp_path / "p", with_labels=False)
    with pytest.raises(ValueError, match="split"):
        D.load_ped2(tmp_path / "p", "validation")


def test_an_empty_folder_says_what_was_expected(tmp_path):
    """No stray "custom :" (the default name and an empty split) before the message; a named dataset
    and split are kept, and a video-file layout says which files it looked for."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DatasetFormatError) as ei:
        D.load_frame_folders(tmp_path / "empty")
    assert str(ei.value) == f"no videos found in {tmp_path / 'empty'} (expected one folder of frames per video)"
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "notes.txt").write_text("not a video")
    with pytest.raises(D.DatasetFormatError) as ei:
        D.load_frame_folders(tmp_path / "frames", name="avenue", split="testing", videos_dirname="videos")
    assert str(ei.value) == (f"avenue testing: no videos found in {tmp_path / 'videos'} (expected video files: "
                             + ", ".join(D.VIDEO_EXTENSIONS) + ")")
    with pytest.raises(D.DatasetNotFoundError) as ei:
        D.load_frame_folders(tmp_path / "nowhere")
    assert str(ei.value) == f"frames folder not found: {tmp_path / 'nowhere'}"


# ----------------------------------------------------------------------------- Avenue / ShanghaiTech


def test_real_label_files():
    avenue = D.load_npz_labels(shared("vad_groundtruth", "Avenue_gt.npz"))
    st = D.load_npz_labels(shared("vad_groundtruth", "ST_gt.npz"))
    assert len(avenue) == 21 and sum(v.size for v in avenue.values()) == 15324
    assert sum(int(v.sum()) for v in avenue.values()) == 3867
    assert len(st) == 107 and sum(v.size for v in st.values()) == 40791
    assert sum(int(v.sum()) for v in st.values()) == 17326
    assert all(v.dtype == np.uint8 for v in list(avenue.values()) + list(st.values()))


def test_avenue_layout(tmp_path):
    root = tmp_path / "avenue"
    _touch_frames(root / "training" / "frames" / "01", 4, "{:04d}.jpg")
    _touch_frames(root / "testing" / "frames" / "01", 5, "{:04d}.jpg")
    _touch_frames(root / "testing" / "frames" / "02", 3, "{:04d}.jpg")
    np.savez(root / "Avenue_gt.npz", **{"01": np.array([0, 0, 1, 1, 0.0]), "02": np.array([1, 1, 0.0])})
    test = D.load_avenue(root, "testing")
    assert test.names == ["01", "02"] and test.n_frames == 8
    np.testing.assert_array_equal(test["01"].labels, [0, 0, 1, 1, 0])
    assert test["01"].labels.dtype == np.uint8
    train = D.load_avenue(root, "training")
    assert train.names == ["01"] and not train.has_labels
    # explicit label file, and a label/frame length mismatch
    np.savez(tmp_path / "bad.npz", **{"01": np.zeros(4), "02": np.zeros(3)})
    with pytest.raises(D.DatasetFormatError, match="4 labels for 5 frames"):
        D.load_avenue(root, "test", labels_path=tmp_path / "bad.npz")
    np.savez(tmp_path / "vals.npz", **{"01": np.full(5, 2), "02": np.zeros(3)})
    with pytest.raises(D.DatasetFormatError, match="0/1"):
        D.load_avenue(root, "test", labels_path=tmp_path / "vals.npz")


def test_avenue_release_layout_with_the_real_labels(tmp_path):
    """CUHK Avenue as released: root/{training,testing}_videos/01.avi, read without rearranging."""
    gt_path = shared("vad_groundtruth", "Avenue_gt.npz")
    root = tmp_path / "Avenue Dataset"
    for split, n in (("training", 16), ("testing", 21)):
        (root / f"{split}_videos").mkdir(parents=True)
        for i in range(1, n + 1):
            (root / f"{split}_videos" / f"{i:02d}.avi").write_bytes(b"")  # listed, never decoded here
    (root / "testing_label_mask").mkdir()
    test = D.load_avenue(root, labels_path=gt_path)
    assert test.names == [f"{i:02d}" for i in range(1, 22)] and test.n_frames == 15324
    assert test["07"].video_path == str((root / "testing_videos" / "07.avi").resolve())
    np.testing.assert_array_equal(test["07"].labels, np.load(gt_path)["07"])
    train = D.load_avenue(root, "train")
    assert len(train) == 16 and not train.has_labels and train.n_frames is None
    with pytest.raises(D.DatasetNotFoundError, match="testing_videos"):
        D.load_avenue(tmp_path / "Avenue Dataset" / "testing_label_mask")
    with pytest.raises(D.DatasetNotFoundError, match=r"shanghaitech testing folder not found: [^(]+testing$"):
        D.load_shanghaitech(root)  # no release layout there: only the split folder is named


def test_shanghaitech_layout_with_training_videos(tmp_path):
    root = tmp_path / "st"
    (root / "training" / "videos").mkdir(parents=True)
    for name in ("01_002.avi", "01_001.avi", "notes.txt"):
        (root / "training" / "videos" / name).write_bytes(b"")
    _touch_frames(root / "testing" / "frames" / "01_0014", 4)
    np.savez(root / "ST_gt.npz", **{"01_0014": np.array([0, 1, 1, 0], dtype=np.uint8)})
    train = D.load_shanghaitech(root, "train")
    assert train.names == ["01_001", "01_002"]
    assert train[0].video_path.endswith("01_001.avi") and train[0].frame_paths == () and train[0].n_frames is None
    assert train.n_frames is None
    test = D.load_shanghaitech(root)
    assert test["01_0014"].labels.tolist() == [0, 1, 1, 0]
    # a labelled video whose frames are missing is named in the error
    np.savez(tmp_path / "more.npz", **{"01_0014": np.zeros(4), "01_0015": np.zeros(3)})
    with pytest.raises(D.DatasetNotFoundError, match="01_0015"):
        D.load_shanghaitech(root, labels_path=tmp_path / "more.npz")
    # labels of the wrong length name the label file they came from (they said 'in labels')
    np.savez(tmp_path / "short.npz", **{"01_0014": np.zeros(3)})
    with pytest.raises(D.DatasetFormatError, match=r"labels of video '01_0014' in \S*short\.npz: 3 labels for 4 frames"):
        D.load_shanghaitech(root, labels_path=tmp_path / "short.npz")


def test_a_mat_file_as_label_npz_is_named_without_pickle_advice(tmp_path):
    """numpy's advice to load a non-.npz with allow_pickle is not passed on (a MATLAB file is not one)."""
    import scipy.io

    from llsh_index import metrics

    mat = tmp_path / "ped2.mat"
    scipy.io.savemat(mat, {"gt": np.array([[np.array([[61], [180]])]], dtype=object)})
    for load, error in ((metrics.load_labels, metrics.LabelFileError), (D.load_npz_labels, D.DatasetFormatError)):
        with pytest.raises(error, match="not an .npz archive") as ei:
            load(mat)
        assert "pickle" not in str(ei.value)


def test_npz_missing_pieces(tmp_path):
    root = tmp_path / "st"
    _touch_frames(root / "testing" / "frames" / "01_0014", 4)
    with pytest.raises(D.DatasetNotFoundError, match="ST_gt.npz"):
        D.load_shanghaitech(root)
    with pytest.raises(D.DatasetNotFoundError, match="training"):
        D.load_shanghaitech(root, "training")
    with pytest.raises(D.DatasetNotFoundError, match="missing.npz"):
        D.load_npz_labels(tmp_path / "missing.npz")
    with pytest.raises(D.DatasetNotFoundError, match="avenue folder"):
        D.load_avenue(tmp_path / "no_avenue")


def test_dataset_container():
    v = D.Video("a", ("x/0.jpg", "x/1.jpg"), None, np.array([0, 1], dtype=np.uint8))
    ds = D.VideoDataset("custom", "testing", "x", [v])
    assert len(ds) == 1 and ds["a"] is v and ds[0] is v and list(ds) == [v]
    assert ds.n_frames == 2 and ds.has_labels and v.source == ("x/0.jpg", "x/1.jpg")
    with pytest.raises(KeyError):
        ds["b"]
    ds.videos.append(D.Video("b", ("y.jpg",)))
    with pytest.raises(D.DatasetFormatError, match="no labels"):
        ds.labels_by_video()


def test_bundled_ped2_demo_features():
    if not D.PED2_DEMO_PATH.is_file():
        pytest.skip(f"{D.PED2_DEMO_PATH} not generated (scripts/make_demo_features.py)")
    demo = D.load_ped2_demo()
    assert sorted(demo.train) == [f"{i:02d}" for i in range(1, 17)]
    assert sorted(demo.test) == [f"{i:02d}" for i in range(1, 13)]
    assert demo.dim == 2560 and demo.meta["T"] == 16 and demo.meta["clamp"] is True
    assert sum(int(l.sum()) for l in demo.test_labels.values()) == 1648
    assert sum(l.size for l in demo.test_labels.values()) == 2010
    stride = demo.meta["train_snippet_stride"]
    for name, f in demo.test.items():  # one snippet per test frame
        assert f.shape == (demo.test_labels[name].size, 2560) and f.dtype == np.float32
        np.testing.assert_array_equal(demo.frame_index["test"][name], np.arange(len(f)))
    assert sum(len(f) for f in demo.train.values()) == sum(-(-n // stride) for n in
                                                          (demo.meta["n_frames"][f"train/{k}"] for k in demo.train))
    x = demo.test["01"]
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=2e-3)


def test_demo_features_of_another_layout_say_which(tmp_path):
    """load_ped2_demo on an `extract` output (one split, plain names) says so and what the demo file
    holds; a file that mixes the layouts names its entry; a file in the demo layout loads."""
    from llsh_index.video import save_features

    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    save_features(tmp_path / "test.npz", {"01": x, "02": x, "03": x, "04": x}, {"extractor": "efficientnet_lite0"})
    with pytest.raises(D.DatasetFormatError) as ei:
        D.load_ped2_demo(tmp_path / "test.npz")
    assert str(ei.value) == (f"{tmp_path / 'test.npz'}: a feature file of plain videos (01, 02, 03, ...), as "
                             "`llsh-index extract` writes, not a demo features file: that holds both splits, its "
                             "videos named 'train/<video>' and 'test/<video>' (labelled), as "
                             "scripts/make_demo_features.py writes")
    save_features(tmp_path / "mixed.npz", {"train/01": x, "02": x}, {})
    with pytest.raises(D.DatasetFormatError, match=r"unexpected entry '02' \(expected 'train/<video>'"):
        D.load_ped2_demo(tmp_path / "mixed.npz")
    labels = np.array([0, 0, 1, 1, 0], np.uint8)
    save_features(tmp_path / "demo.npz", {"train/01": x, "test/01": x}, {}, labels_by_video={"test/01": labels})
    demo = D.load_ped2_demo(tmp_path / "demo.npz")
    np.testing.assert_array_equal(demo.train["01"], x)
    np.testing.assert_array_equal(demo.test_labels["01"], labels)


def test_a_video_not_in_the_dataset_is_a_typed_key_and_index_error(tmp_path):
    """ds["zz"] and ds[10] were a bare KeyError / IndexError: now VideoNotFoundError, which is both
    (so `except KeyError` / `except IndexError` still catch it) and names the videos there are."""
    from llsh_index.datasets import Video, VideoDataset, VideoNotFoundError
    from llsh_index.errors import InvalidDTypeError, LLSHError

    ds = VideoDataset("toy", "test", str(tmp_path), [Video("01", ("a.png",)), Video("02", ("b.png",))])
    assert ds["02"].name == "02" and ds[0].name == "01" and ds[-1].name == "02"
    for key, message in (("zz", "no video named 'zz' in toy/test \\(it has 01, 02\\)"),
                         (10, "video 10 of toy/test: expected a position in \\[-2, 2\\)"), (-3, "video -3")):
        with pytest.raises(VideoNotFoundError, match=message) as info:
            ds[key]
        assert isinstance(info.value, KeyError) and isinstance(info.value, IndexError) and isinstance(info.value, LLSHError)
    with pytest.raises(InvalidDTypeError, match="expected a name .* or a position .* got float"):
        ds[1.0]


# ----------------------------------------------------------------------------- IITB Corridor


def _corridor_release(root: Path, split: str, numbers, ext=".avi"):
    for n in numbers:
        folder = root / split / f"{int(n):06d}"
        folder.mkdir(parents=True)
        (folder / f"{int(n):06d}{ext}").write_bytes(b"")  # listed, never decoded here
    return root


def test_corridor_original_release_with_the_real_labels(tmp_path):
    """The release's Test/000209/000209.avi folders, numbered from the real Corridor_gt.npz: every
    label key finds its video, names drop the zeros, the black first frame is skipped in each."""
    gt_path = shared("vad_groundtruth", "Corridor_gt.npz")
    gt = np.load(gt_path)
    root = _corridor_release(tmp_path / "corridor", "Test", gt.files)
    (root / "Test" / "000209" / "000209.npy").write_bytes(b"")  # the release's annotation beside the video
    _corridor_release(root, "Train", [1, 2, 10])
    test = D.load_corridor(root, "test", labels_path=gt_path)
    assert test.name == "corridor" and len(test) == 150
    assert test.names == sorted(gt.files, key=int) and test.names[:2] == ["209", "210"]
    assert test.n_frames == 181567 and sum(int(v.labels.sum()) for v in test) == 108278
    assert all(v.first_frame == 1 and v.video_path.endswith(f"{int(v.name):06d}.avi") for v in test)
    np.testing.assert_array_equal(test["300"].labels, gt["300"])
    train = D.load_corridor(root, "train")
    assert train.names == ["1", "2", "10"] and not train.has_labels and train.n_frames is None
    assert [v.first_frame for v in train] == [1, 1, 1]
    assert D.load_corridor(root, "train", skip_first_frame=False)["1"].first_frame == 0
    # the label file is found under the root by default
    (root / "Corridor_gt.npz").write_bytes(gt_path.read_bytes())
    assert D.load_corridor(root).names == test.names


def test_corridor_frame_folders_skip_the_black_frame_only_when_it_is_there(tmp_path):
    root = tmp_path / "corridor"
    _touch_frames(root / "testing" / "frames" / "000209", 6, "{:06d}.jpg")  # black first frame kept
    PIL = pytest.importorskip("PIL.Image")  # that frame is read: it must be black to be skipped
    PIL.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "testing" / "frames" / "000209" / "000000.jpg")
    _touch_frames(root / "testing" / "frames" / "000210", 4, "{:06d}.jpg")  # extracted with --skip_first
    # training folders have no labels to count against: their first frame is read, skipped when black
    for folder, value in (("000001", 0), ("000002", 128)):
        _touch_frames(root / "training" / "frames" / folder, 3, "{:06d}.jpg")
        PIL.fromarray(np.full((8, 8, 3), value, np.uint8)).save(root / "training" / "frames" / folder / "000000.jpg")
    np.savez(root / "Corridor_gt.npz", **{"209": np.array([0, 0, 1, 1, 0]), "210": np.array([1, 1, 0, 0])})
    test = D.load_corridor(root)
    assert test.names == ["209", "210"] and [v.first_frame for v in test] == [1, 0]
    assert test.n_frames == 9 and test["209"].frame_paths[0].endswith("000000.jpg")
    train = D.load_corridor(root, "training")
    assert [v.first_frame for v in train] == [1, 0] and train.n_frames == 5
    assert D.load_corridor(root, "training", skip_first_frame=True)["2"].n_frames == 2
    assert D.load_corridor(root, "training", skip_first_frame=False)["1"].n_frames == 3
    with pytest.raises(D.DatasetFormatError, match="5 labels for 6 frames"):
        D.load_corridor(root, skip_first_frame=False)
    with pytest.raises(D.DatasetFormatError, match="4 labels for 3 frames"):
        D.load_corridor(root, skip_first_frame=True)


def test_corridor_errors_name_what_is_wrong(tmp_path):
    root = tmp_path / "corridor"
    root.mkdir()
    with pytest.raises(D.DatasetNotFoundError, match=r"testing.*Test"):
        D.load_corridor(root)
    (root / "Test" / "000209").mkdir(parents=True)
    with pytest.raises(D.DatasetFormatError, match="no video file.*000209"):
        D.load_corridor(root, with_labels=False)
    (root / "Test" / "000209" / "000209.avi").write_bytes(b"")
    with pytest.raises(D.DatasetNotFoundError, match="Corridor_gt.npz"):
        D.load_corridor(root)
    np.savez(tmp_path / "gt.npz", **{"209": np.zeros(3), "211": np.zeros(2)})
    with pytest.raises(D.DatasetNotFoundError, match="211"):
        D.load_corridor(root, labels_path=tmp_path / "gt.npz")
    _corridor_release(root, "Test", [210])
    np.savez(tmp_path / "gt2.npz", **{"209": np.zeros(3)})
    with pytest.raises(D.DatasetFormatError, match=r"no labels for videos \['210'\]"):
        D.load_corridor(root, labels_path=tmp_path / "gt2.npz")
    (root / "Test" / "0210").mkdir()
    (root / "Test" / "0210" / "0210.avi").write_bytes(b"")
    with pytest.raises(D.DatasetFormatError, match=r"two videos are numbered \['210'\]"):
        D.load_corridor(root, with_labels=False)
    with pytest.raises(D.ConfigError, match="first_frame"):
        D.Video("x", ("a.jpg",), first_frame=-1)


def test_corridor_video_file_decodes_from_its_second_frame(tmp_path):
    """Decoding a release-layout video: the frames after the black one, exactly, and the snippet
    features of the dataset path equal the oracle's on those frames."""
    from llsh_index import video as V
    from test_video import MeanColour, _clip, _write_lossless_video

    frames = _clip(n=9)
    frames[0] = 0
    folder = tmp_path / "corridor" / "Test" / "000209"
    folder.mkdir(parents=True)
    _write_lossless_video(folder / "000209.mkv", frames)
    np.savez(tmp_path / "corridor" / "Corridor_gt.npz", **{"209": np.r_[np.zeros(4), np.ones(4)]})
    ds = D.load_corridor(tmp_path / "corridor")
    np.testing.assert_array_equal(V.read_frames(ds["209"]), frames[1:])
    assert V.count_frames(ds["209"]) == 8
    feats, _ = V.extract_dataset(ds, MeanColour(T=4), T=4, s=1)
    idx = V.snippet_frame_indices(8, 4, 1, clamp=True)
    expected = np.stack([frames[1:][r].astype(np.float32).mean(axis=(1, 2)).reshape(-1) for r in idx])
    np.testing.assert_allclose(feats["209"], expected, rtol=1e-6)


def test_corridor_release_folder_with_several_video_files(tmp_path):
    """A release folder holding several video files: the one named after the folder is the video
    (beside it, e.g., a preview); without one, or with two, the folder is ambiguous and named."""
    root = _corridor_release(tmp_path / "corridor", "Test", [209, 210])
    (root / "Test" / "000209" / "000209_preview.mp4").write_bytes(b"")
    for name in ("part1.avi", "part2.avi"):
        (root / "Test" / "000211" / name).parent.mkdir(exist_ok=True)
        (root / "Test" / "000211" / name).write_bytes(b"")
    with pytest.raises(D.DatasetFormatError, match=r"000211.*part1\.avi.*part2\.avi"):
        D.load_corridor(root, with_labels=False)
    (root / "Test" / "000211" / "part2.avi").unlink()  # a single file, whatever its name, is the video
    ds = D.load_corridor(root, with_labels=False)
    assert [Path(v.video_path).name for v in ds] == ["000209.avi", "000210.avi", "part1.avi"]
    (root / "Test" / "000210" / "000210.mkv").write_bytes(b"")  # two files named after the folder
    with pytest.raises(D.DatasetFormatError, match=r"000210.*000210\.avi.*000210\.mkv"):
        D.load_corridor(root, with_labels=False)


def test_corridor_label_keys_that_name_one_video_twice(tmp_path):
    """'209' and '0209' in one label file name the same video: refused, not one of them dropped."""
    root = _corridor_release(tmp_path / "corridor", "Test", [209])
    np.savez(tmp_path / "gt.npz", **{"209": np.zeros(3), "0209": np.ones(5)})
    with pytest.raises(D.DatasetFormatError, match=r"'0209'.*'209'.*gt\.npz"):
        D.load_corridor(root, labels_path=tmp_path / "gt.npz")
    np.savez(tmp_path / "gt1.npz", **{"0209": np.r_[np.zeros(2), np.ones(3)]})  # one key, zero-padded: fine
    np.testing.assert_array_equal(D.load_corridor(root, labels_path=tmp_path / "gt1.npz")["209"].labels,
                                  [0, 0, 1, 1, 1])


def test_corridor_skip_first_frame_is_none_or_a_bool(tmp_path):
    root = _corridor_release(tmp_path / "corridor", "Train", [1])
    for bad in ("no", 0, 1.0):
        with pytest.raises(D.ConfigError, match=rf"skip_first_frame: expected None, True or False, got .*{bad!r}"):
            D.load_corridor(root, "train", skip_first_frame=bad)
    assert D.load_corridor(root, "train", skip_first_frame=np.bool_(False))["1"].first_frame == 0


def test_corridor_extra_frame_is_skipped_only_when_it_is_black(tmp_path):
    """A labelled frame folder with one frame more than its labels: the first frame is the one the
    labels leave out only if it is Corridor's black frame. Otherwise skipping it would shift every
    label by a frame: refused, naming the frame, unless skip_first_frame=True says to."""
    PIL = pytest.importorskip("PIL.Image")
    from llsh_index import video as V

    rng = np.random.default_rng(3)
    frames = rng.integers(40, 255, (6, 24, 32, 3), dtype=np.uint8)  # no frame is black
    root = tmp_path / "corridor"
    folder = root / "testing" / "frames" / "000209"
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        PIL.fromarray(f).save(folder / f"{i:06d}.png")
    np.savez(root / "Corridor_gt.npz", **{"209": np.array([0, 0, 1, 1, 0])})
    with pytest.raises(D.DatasetFormatError, match=r"'209'.*6 frames for 5 labels.*000000\.png.*not black.*"
                                                     r"skip_first_frame=True"):
        D.load_corridor(root)
    ds = D.load_corridor(root, skip_first_frame=True)
    np.testing.assert_array_equal(V.read_frames(ds["209"]), frames[1:])
    black = frames.copy()
    black[0] = rng.integers(0, 6, black[0].shape, dtype=np.uint8)  # black, with a little noise
    PIL.fromarray(black[0]).save(folder / "000000.png")
    ds = D.load_corridor(root)
    assert ds["209"].first_frame == 1 and ds["209"].n_frames == 5
    np.testing.assert_array_equal(V.read_frames(ds["209"]), frames[1:])


def test_corridor_feature_cache_knows_the_skipped_frame(tmp_path):
    """A video file's length is unknown before decoding, so the feature cache records each video's
    first_frame: extracting again with another skip_first_frame re-extracts (it reused the features
    of the other skip before), the same skip reuses the file."""
    from llsh_index import video as V
    from test_video import MeanColour, _clip, _write_lossless_video

    frames = _clip(n=7)
    frames[0] = 0
    folder = tmp_path / "corridor" / "Train" / "000001"
    folder.mkdir(parents=True)
    _write_lossless_video(folder / "000001.mkv", frames)
    cache = tmp_path / "train.npz"
    skip = D.load_corridor(tmp_path / "corridor", "train")
    got, meta = V.extract_dataset(skip, MeanColour(T=2), T=2, cache=cache, progress=False)
    assert len(got["1"]) == 6 and meta["first_frames"] == {"1": 1}
    keep = D.load_corridor(tmp_path / "corridor", "train", skip_first_frame=False)
    got, meta = V.extract_dataset(keep, MeanColour(T=2), T=2, cache=cache, progress=False)
    want = V.extract_video(frames, MeanColour(T=2), T=2)
    assert len(got["1"]) == 7 and "first_frames" not in meta
    np.testing.assert_allclose(got["1"], want, rtol=1e-6)
    counter = MeanColour(T=2)
    again, _ = V.extract_dataset(keep, counter, T=2, cache=cache, progress=False)
    assert counter.calls == 0 and len(again["1"]) == 7  # the same skip: read from the cache


def test_corridor_videos_moved_up_a_level(tmp_path):
    """The authors' mvfile_corridor.py moves Test/000209/000209.avi to Test/000209.avi: read too."""
    root = tmp_path / "corridor"
    (root / "Test").mkdir(parents=True)
    for n in (210, 209):
        (root / "Test" / f"{n:06d}.avi").write_bytes(b"")
    np.savez(root / "Corridor_gt.npz", **{"209": np.zeros(5), "210": np.ones(3)})
    test = D.load_corridor(root)
    assert test.names == ["209", "210"] and [v.first_frame for v in test] == [1, 1]
    assert test["210"].video_path == str(root / "Test" / "000210.avi") and test.n_frames == 8
    (root / "Test" / "000211").mkdir()
    with pytest.raises(D.DatasetFormatError, match=r"video folders .* or video files .* got both"):
        D.load_corridor(root)


@pytest.mark.parametrize("load", [D.load_ped2, D.load_avenue, D.load_shanghaitech, D.load_corridor])
def test_with_labels_is_a_checked_switch(tmp_path, load):
    """with_labels='no' loaded the labels (bool('no') is True); it is a ConfigError now, before any
    folder is read."""
    (tmp_path / "testing").mkdir()
    with pytest.raises(D.ConfigError, match=r"with_labels: expected True or False, got str 'no'"):
        load(tmp_path, "testing", with_labels="no")
    with pytest.raises(D.ConfigError, match="require_labels"):
        D.load_frame_folders(tmp_path, {}, require_labels=1)
