"""llsh_index.feature_arrays and `llsh-index import`: pre-extracted per-video arrays into feature files."""
import math

import numpy as np
import pytest

from conftest import shared_path
from llsh_index import ConfigError, InvalidDTypeError, InvalidInputError, LearnableLSHIndex
from llsh_index.cli import main
from llsh_index.feature_arrays import import_feature_arrays, snippet_frame_index
from llsh_index.video import load_feature_file


def _write_folder(tmp_path, arrays, suffix="_i3d"):
    folder = tmp_path / "feats"
    folder.mkdir(exist_ok=True)
    for name, a in arrays.items():
        np.save(folder / f"{name}{suffix}.npy", a)
    return folder


def _alignment_oracle(n_snippets, n, n_frames):
    """Snippet i covers frames [n i, n i + n): its middle frame, at most the last one."""
    return np.array([min(n * i + n // 2, n_frames - 1) for i in range(n_snippets)])


def test_ten_crop_features_with_labels(rng, tmp_path):
    n_frames = {"01_001": 100, "01_002": 37, "02_001": 16}
    arrays = {v: rng.standard_normal((math.ceil(f / 16), 10, 24)).astype(np.float32) for v, f in n_frames.items()}
    arrays["train_01"] = rng.standard_normal((5, 10, 24)).astype(np.float32)  # no labels: a training video
    labels = {v: (rng.random(f) < 0.3).astype(np.uint8) for v, f in n_frames.items()}
    labels["not_in_folder"] = np.zeros(50, np.uint8)
    np.savez(tmp_path / "gt.npz", **labels)
    folder = _write_folder(tmp_path, arrays)
    np.save(folder / "stray.npy", np.zeros((3, 24)))  # no suffix: not a video of this import
    ff = import_feature_arrays(folder, tmp_path / "out.npz", labels=tmp_path / "gt.npz", snippet_frames=16,
                               suffix="_i3d", progress=False)
    assert ff.videos == sorted(arrays)
    for v, a in arrays.items():
        np.testing.assert_allclose(ff.features[v], a.astype(np.float64).mean(axis=1), rtol=1e-6)
        n = n_frames.get(v, 16 * len(a))
        assert ff.n_frames[v] == n
        np.testing.assert_array_equal(ff.frame_index[v], _alignment_oracle(len(a), 16, n))
    for v in n_frames:
        np.testing.assert_array_equal(ff.labels[v], labels[v])
    assert set(ff.labels) == set(n_frames)
    assert ff.meta["videos_without_labels"] == ["train_01"] and ff.meta["labels_left_out"] == 1
    reread = load_feature_file(tmp_path / "out.npz")
    assert reread.videos == ff.videos and reread.n_frames == ff.n_frames
    # one crop instead of the mean; float16 storage
    one = import_feature_arrays(folder, labels=tmp_path / "gt.npz", snippet_frames=16, suffix="_i3d", crops=3,
                                dtype="float16", progress=False)
    for v, a in arrays.items():
        np.testing.assert_array_equal(one.features[v], a[:, 3].astype(np.float16).astype(np.float32))
    assert (ff.meta["crops"], one.meta["crops"]) == ("mean", 3)  # recorded: it chose among the crops


def test_frame_level_features_need_one_snippet_per_frame(rng, tmp_path):
    arrays = {"a": rng.standard_normal((30, 8)), "b": rng.standard_normal((12, 8))}
    folder = _write_folder(tmp_path, arrays, suffix="")
    ff = import_feature_arrays(folder, labels={"a": np.zeros(30), "b": np.ones(12)}, progress=False)
    assert ff.n_frames == {"a": 30, "b": 12} and not ff.frame_index
    # no file had crops: `crops` did nothing, and the recorded feature space says so whatever it was
    other = import_feature_arrays(folder, labels={"a": np.zeros(30), "b": np.ones(12)}, crops=2, progress=False)
    assert ff.meta["crops"] is None and other.meta["crops"] is None
    np.testing.assert_array_equal(other.features["a"], ff.features["a"])
    np.testing.assert_allclose(ff.features["a"], arrays["a"].astype(np.float32))
    with pytest.raises(InvalidInputError, match="one snippet per frame"):
        import_feature_arrays(folder, labels={"a": np.zeros(31)}, progress=False)


def test_alignment_bounds():
    np.testing.assert_array_equal(snippet_frame_index(3, 16, 40), [8, 24, 39])  # the last chunk is partial
    np.testing.assert_array_equal(snippet_frame_index(2, 16, 40), [8, 24])  # a partial chunk dropped: covered
    with pytest.raises(InvalidInputError, match="at most 3 snippets"):
        snippet_frame_index(4, 16, 40)  # the 4th snippet starts at frame 48
    with pytest.raises(InvalidInputError, match="at least 4 snippets"):
        snippet_frame_index(3, 16, 64)  # 16 frames left uncovered: snippet_frames is not 16
    with pytest.raises(InvalidInputError, match="video 'v'"):
        snippet_frame_index(9, 8, 40, "v")


def test_the_cli_path_scores_imported_features_as_the_index_does(rng, tmp_path, capsys):
    """import (train, test) -> build -> score -> evaluate; the scores are the index's snippet scores,
    interpolated between the snippets' middle frames (NumPy oracle), and evaluate's AUC is theirs."""
    from llsh_index import metrics

    d = 16
    mu = rng.standard_normal(d)  # normal snippets: one pattern plus noise
    train = {f"t{i}": (mu + 0.3 * rng.standard_normal((20, 10, d))).astype(np.float32) for i in range(3)}
    n_frames = {"v1": 150, "v2": 90}
    test = {v: (mu + 0.3 * rng.standard_normal((math.ceil(f / 16), 10, d))).astype(np.float32)
            for v, f in n_frames.items()}
    test["v1"][4:7] += 3.0 * rng.standard_normal(d).astype(np.float32)  # an anomalous stretch (not a constant:
    test["v2"][1:2] += 3.0 * rng.standard_normal(d).astype(np.float32)  # LayerNorm removes that)
    labels = {v: np.zeros(f, np.uint8) for v, f in n_frames.items()}
    labels["v1"][64:112] = 1
    labels["v2"][16:32] = 1
    np.savez(tmp_path / "gt.npz", **labels)
    tr_dir, te_dir = tmp_path / "train", tmp_path / "test"
    tr_dir.mkdir(), te_dir.mkdir()
    for v, a in train.items():
        np.save(tr_dir / f"{v}.npy", a)
    for v, a in test.items():
        np.save(te_dir / f"{v}.npy", a)
    out = lambda name: str(tmp_path / name)  # noqa: E731
    assert main(["import", "--folder", str(tr_dir), "--snippet-frames", "16", "--out", out("train.npz"),
                 "--quiet"]) == 0
    assert main(["import", "--folder", str(te_dir), "--labels", str(tmp_path / "gt.npz"), "--snippet-frames",
                 "16", "--out", out("test.npz"), "--quiet"]) == 0
    assert main(["build", "--features", out("train.npz"), "--n-bits", "6", "--n-tables", "4", "--out",
                 out("index.llsh"), "--quiet"]) == 0
    assert main(["score", "--index", out("index.llsh"), "--features", out("test.npz"), "--out",
                 out("scores.npz")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--scores", out("scores.npz"), "--labels", out("test.npz"), "--json",
                 out("auc.json")]) == 0
    index = LearnableLSHIndex(d, n_tables=4, n_bits=6, seed=0).add(
        np.concatenate([a.astype(np.float64).mean(axis=1) for _, a in sorted(train.items())]).astype(np.float32))
    scores = np.load(out("scores.npz"))
    want = {}
    for v, a in test.items():
        s = index.score(a.astype(np.float64).mean(axis=1).astype(np.float32)).astype(np.float64)
        mids = _alignment_oracle(len(a), 16, n_frames[v])
        want[v] = np.interp(np.arange(n_frames[v]), mids, s)
        np.testing.assert_allclose(scores[v], want[v], rtol=1e-5)
    import json

    res = metrics.evaluate(want, labels, sigma=12)
    got = json.load(open(out("auc.json")))
    assert got["micro_auc"] == pytest.approx(res.micro.auc, abs=1e-6)
    assert got["macro_auc"] == pytest.approx(res.macro.auc, abs=1e-6)
    assert res.micro.auc > 0.8  # the stretch stands out


def test_real_label_file_lengths(tmp_path):
    """ShanghaiTech's published labels: I3D-like features of ceil(n / 16) snippets take each video's
    frame count from the label file."""
    gt_path = shared_path("vad_groundtruth", "ST_gt.npz")
    gt = dict(np.load(gt_path))
    names = sorted(gt)[:3]
    rng = np.random.default_rng(0)
    for v in names:
        np.save(tmp_path / f"{v}.npy", rng.standard_normal((math.ceil(gt[v].size / 16), 10, 8)).astype(np.float32))
    out = import_feature_arrays(tmp_path, labels=gt_path, snippet_frames=16, progress=False)
    assert out.n_frames == {v: gt[v].size for v in names}
    for v in names:
        np.testing.assert_array_equal(out.labels[v], gt[v].astype(np.uint8))
        np.testing.assert_array_equal(out.frame_index[v], _alignment_oracle(len(out.features[v]), 16, gt[v].size))
    assert out.meta["labels_left_out"] == len(gt) - 3


@pytest.mark.parametrize("array,match", [
    (np.zeros(5), r"expected \(n_snippets, dim\) or \(n_snippets, n_crops, dim\)"),
    (np.zeros((2, 3, 4, 5)), r"got shape \(2, 3, 4, 5\)"),
    (np.zeros((0, 4)), "at least one snippet"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN or Inf"),
    (np.array([["a", "b"]]), "numeric features"),
    (np.array([[1, 2]], dtype=object), "not a readable .npy"),
])
def test_bad_arrays_name_the_file(tmp_path, array, match):
    folder = tmp_path / "f"
    folder.mkdir()
    np.save(folder / "v.npy", array, allow_pickle=True)
    with pytest.raises(InvalidInputError, match=match) as info:
        import_feature_arrays(folder, progress=False)
    assert "v.npy" in str(info.value)


def test_bad_folders_and_settings(rng, tmp_path):
    folder = _write_folder(tmp_path, {"a": rng.standard_normal((4, 3, 6)), "b": rng.standard_normal((4, 3, 7))},
                           suffix="")
    with pytest.raises(InvalidInputError, match="same feature dimension"):
        import_feature_arrays(folder, progress=False)
    with pytest.raises(FileNotFoundError, match="feature folder not found"):
        import_feature_arrays(tmp_path / "nope", progress=False)
    with pytest.raises(InvalidInputError, match=r"<video>_x\.npy, found none"):
        import_feature_arrays(folder, suffix="_x", progress=False)
    for bad in (-1, True, "max", 2.0):
        with pytest.raises(ConfigError, match="crops"):
            import_feature_arrays(folder, crops=bad, progress=False)
    with pytest.raises(ConfigError, match="has 3 crops"):
        import_feature_arrays(folder, crops=3, progress=False)
    for bad in (0, True, 16.0):
        with pytest.raises(ConfigError, match="snippet_frames"):
            import_feature_arrays(folder, snippet_frames=bad, progress=False)
    (folder / "c.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InvalidInputError, match="c.npy: not a readable"):
        import_feature_arrays(folder, progress=False)


def test_the_cli_reports_errors_without_a_traceback(rng, tmp_path, capsys):
    folder = _write_folder(tmp_path, {"a": rng.standard_normal((3, 6))}, suffix="")
    np.savez(tmp_path / "gt.npz", a=np.zeros(200, np.uint8))
    rc = main(["import", "--folder", str(folder), "--labels", str(tmp_path / "gt.npz"), "--snippet-frames", "16",
               "--out", str(tmp_path / "o.npz"), "--quiet"])
    assert rc == 2 and "at least 12 snippets" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


def _header_damaged(folder, name, new_shape):
    import io

    b = io.BytesIO()
    np.save(b, np.ones((5, 4), np.float32))
    raw = b.getvalue()
    i = raw.index(b"(5, 4)")
    (folder / name).write_bytes(raw[:i] + new_shape + raw[i + 6:])


@pytest.mark.parametrize("shape", [b"(5, 4 ", b"(5.5,4", b"(5,,4)"])
def test_damaged_headers_name_the_file(tmp_path, shape):
    folder = tmp_path / "f"
    folder.mkdir()
    _header_damaged(folder, "v.npy", shape)
    with pytest.raises(InvalidInputError, match="v.npy: not a readable .npy array"):
        import_feature_arrays(folder, progress=False)


def test_values_beyond_float32_and_empty_crops_say_so(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    np.save(folder / "v.npy", np.array([[1e300, 0.0], [1.0, 2.0]]))
    with pytest.raises(InvalidInputError, match="within float32's range"):
        import_feature_arrays(folder, progress=False)
    np.save(folder / "v.npy", np.zeros((3, 0, 4), np.float32))
    with pytest.raises(InvalidInputError, match="at least one crop"):
        import_feature_arrays(folder, progress=False)


def test_entries_named_like_videos_that_are_not_files_are_refused(rng, tmp_path):
    folder = _write_folder(tmp_path, {"a": rng.standard_normal((3, 4))}, suffix="")
    (folder / "b.npy").symlink_to(tmp_path / "gone")
    (folder / "c.npy").mkdir()
    with pytest.raises(InvalidInputError, match=r"2 entries named like videos.*b\.npy, c\.npy"):
        import_feature_arrays(folder, progress=False)


def test_an_unlistable_folder_is_a_typed_error(rng, tmp_path, monkeypatch, capsys):
    import os

    folder = _write_folder(tmp_path, {"a": rng.standard_normal((3, 4))}, suffix="")

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "listdir", refuse)
    with pytest.raises(InvalidInputError, match="cannot list the feature folder"):
        import_feature_arrays(folder, progress=False)
    assert main(["import", "--folder", str(folder), "--out", str(tmp_path / "o.npz"), "--quiet"]) == 2
    assert "cannot list" in capsys.readouterr().err


def test_labels_that_match_no_video_are_refused(rng, tmp_path):
    folder = _write_folder(tmp_path, {"v1": rng.standard_normal((3, 4))})  # v1_i3d.npy
    with pytest.raises(InvalidInputError, match="labels of 1 others .*another suffix"):
        import_feature_arrays(folder, labels={"v1_x": np.zeros(40)}, snippet_frames=16, progress=False)
    ff = import_feature_arrays(folder, labels={"v1": np.zeros(40)}, snippet_frames=16, suffix="_i3d", progress=False)
    assert ff.n_frames == {"v1": 40}


def test_bad_argument_types_are_config_errors(rng, tmp_path, capsys):
    folder = _write_folder(tmp_path, {"a": rng.standard_normal((3, 4))}, suffix="")
    for labels in ([("a", np.zeros(3))], 3):
        with pytest.raises(ConfigError, match="labels: expected None, a label .npz path or a mapping"):
            import_feature_arrays(folder, labels=labels, progress=False)
    with pytest.raises(ConfigError, match="folder: expected a str or os.PathLike"):
        import_feature_arrays(str(folder).encode(), progress=False)
    with pytest.raises(InvalidDTypeError, match="labels\\['a'\\]: expected a numeric 0/1 array"):
        import_feature_arrays(folder, labels={"a": None}, progress=False)
    for huge in (2 ** 31, 2 ** 62, 10 ** 20):
        with pytest.raises(ConfigError, match="snippet_frames: expected an integer in"):
            import_feature_arrays(folder, snippet_frames=huge, progress=False)
    assert main(["import", "--folder", str(folder), "--snippet-frames", "1099511627776", "--out",
                 str(tmp_path / "o.npz"), "--quiet"]) == 2
    assert "snippet_frames" in capsys.readouterr().err
    with pytest.raises(InvalidInputError, match="at most 2147483647 frames"):
        snippet_frame_index(3, 2 ** 30, 2 ** 31 + 10)
