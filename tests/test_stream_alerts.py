"""Alert thresholds of the live scorer (StreamScorer(threshold=...), calibrate(), llsh-index stream
--threshold / --calibrate) against an independent NumPy oracle.

Oracle: a frame alerts when its offline smoothed score (tests/test_stream.py's oracle) is strictly
above the threshold; alert intervals are the runs of consecutive alerting frames, found by a loop.
A calibrated threshold is np.quantile(., 1 - contamination) of every calibration frame's smoothed
score, each video smoothed on its own (gaussian_filter1d, or the causal weights), its raw scores from
index.score (held-out videos) or, leave-videos-out, from index.empty_like() holding the videos of
every fold but the video's own (video v in fold v % min(10, n_videos)).
"""
import copy
import pickle

import numpy as np
import pytest

from llsh_index import LearnableLSHIndex
from llsh_index.errors import ConfigError, InvalidInputError
from llsh_index.stream import StreamScorer, StreamScores, alert_intervals
from llsh_index.video import load_feature_file, save_features
from test_stream import GridMeans, GridMeansPerFrame, _video, index, oracle, oracle_smooth, run  # noqa: F401

T = 5


def snippets(frames, T=T, s=1):
    """One GridMeans snippet feature per frame, the video's ends repeated (extract's clamping)."""
    n = len(frames)
    back = ((T - 1) * s + 1) // 2
    idx = np.clip(np.arange(n)[:, None] - back + s * np.arange(T), 0, n - 1)
    return GridMeans().extract(frames[idx])


def runs_by_hand(flags):
    """(start, end) of each run of True, by a plain loop."""
    out, start = [], None
    for f, a in enumerate(list(flags) + [False]):
        if a and start is None:
            start = f
        elif not a and start is not None:
            out.append((start, f - 1))
            start = None
    return out


def leave_videos_out_oracle(base, feats, **score_kw):
    """Raw scores of each video by an index on base's layers without the videos of its fold."""
    n_folds = min(10, len(feats))
    raw = [None] * len(feats)
    for fold in range(n_folds):
        others = np.concatenate([f for v, f in enumerate(feats) if v % n_folds != fold])
        fold_index = base.empty_like().add(others)
        for v in range(fold, len(feats), n_folds):
            raw[v] = fold_index.score(feats[v], **score_kw).astype(np.float64)
    return raw


@pytest.fixture(scope="module")
def normal():
    """12 short normal videos (the first half of _video, before its anomaly), frames and features."""
    rng = np.random.default_rng(21)
    frames = [_video(rng, 2 * n)[:n] for n in (30, 24, 41, 35, 28, 33, 26, 38, 30, 22, 36, 29)]
    return frames, [snippets(f) for f in frames]


@pytest.fixture(scope="module")
def normal_index(normal):
    return LearnableLSHIndex(24, n_tables=4, n_bits=6, seed=3).add(np.concatenate(normal[1]))


# ---------------------------------------------------------------------- alerts
@pytest.mark.parametrize("extractor", [GridMeans(), GridMeansPerFrame()], ids=["per-snippet", "per-frame"])
@pytest.mark.parametrize("smoothing,sigma", [("centred", 3.0), ("causal", 4.0), ("centred", 0.0)])
def test_alerts_are_the_offline_scores_strictly_above_the_threshold(index, extractor, smoothing, sigma):
    frames = _video(np.random.default_rng(22), 120)
    want, _ = oracle(index, GridMeans(), frames, T, 1, sigma, smoothing)
    plain = StreamScorer(index, extractor, T=T, sigma=sigma, smoothing=smoothing)
    scores, _ = run(plain, frames, [4])
    threshold = float(scores[100])  # a score the stream gives: that frame is not above it
    scorer = StreamScorer(index, extractor, T=T, sigma=sigma, smoothing=smoothing, threshold=threshold)
    outs, i = [], 0
    for size in [1, 7, 30, 2] * 20:
        if i >= len(frames):
            break
        outs.append(scorer.push(frames[i:i + size]))
        i += size
    outs.append(scorer.flush())
    alerts = np.concatenate([o.alerts for o in outs])
    assert alerts.dtype == bool and all(o.threshold == threshold for o in outs)
    assert np.concatenate([o.frames for o in outs]).tolist() == list(range(120))
    np.testing.assert_array_equal(alerts, np.concatenate([o.scores for o in outs]) > threshold)
    assert not alerts[100] and 0 < alerts.sum() < 120  # frame 100 scores the threshold: not above it
    # the oracle agrees to 1e-12: on every frame but the one at the threshold
    far = np.abs(want - threshold) > 1e-12
    assert np.flatnonzero(~far).tolist() == [100]
    np.testing.assert_array_equal(alerts[far], (want > threshold)[far])
    assert runs_by_hand(far & (want > threshold)) == alert_intervals(np.arange(120), alerts)
    # no threshold: no decision
    assert plain.threshold is None and plain.push(frames[:20]).alerts is None and plain.flush().alerts is None


def test_stream_scores_stay_three_fields():
    out = StreamScores(np.arange(3), np.array([1.0, 2.0, 3.0]), np.zeros(3), 2.0)
    frames, scores, raw = out  # unpacking as before thresholds
    assert len(out) == 3 and out._fields == ("frames", "scores", "raw")
    assert out.alerts.tolist() == [False, False, True]  # strictly above
    for clone in (pickle.loads(pickle.dumps(out)), copy.deepcopy(out), copy.copy(out),
                  out._replace(scores=np.array([3.0, 1.0, 2.5]))):
        assert clone.threshold == 2.0
    assert out._replace(scores=np.array([3.0, 1.0, 2.5])).alerts.tolist() == [True, False, True]
    assert StreamScores(frames, scores, raw).alerts is None and StreamScores._make(out).threshold is None


def test_threshold_can_be_set_later_and_is_checked(index):
    frames = _video(np.random.default_rng(23), 60)
    scorer = StreamScorer(index, GridMeans(), T=T, sigma=3)
    first = scorer.push(frames[:30])
    scorer.threshold = np.float32(0.05)
    rest = [scorer.push(frames[30:]), scorer.flush()]
    want, _ = oracle(index, GridMeans(), frames, T, 1, 3)
    assert first.alerts is None and isinstance(scorer.threshold, float)
    n = len(first.frames)
    np.testing.assert_array_equal(np.concatenate([o.alerts for o in rest]), want[n:] > np.float32(0.05))
    for bad in (float("nan"), float("inf"), -np.inf):
        with pytest.raises(ConfigError, match=r"threshold: expected a finite number .* got (nan|inf|-inf)"):
            StreamScorer(index, GridMeans(), T=T, threshold=bad)
    for bad in ("0.5", True, [0.5]):
        with pytest.raises(ConfigError, match="threshold: expected a real number"):
            scorer.threshold = bad
    assert scorer.threshold == np.float32(0.05)  # a refused value leaves the threshold as it was
    scorer.threshold = None
    assert scorer.push(frames[:3]).alerts is None


def test_alert_intervals_by_hand():
    assert alert_intervals(np.arange(10), [0, 0, 1, 1, 1, 0, 0, 1, 0, 0]) == [(2, 4), (7, 7)]
    assert alert_intervals(np.arange(5), np.ones(5, bool)) == [(0, 4)]
    assert alert_intervals(np.arange(5), np.zeros(5, bool)) == [] == alert_intervals([], [])
    assert alert_intervals([3, 4, 6, 7], [1, 1, 1, 1]) == [(3, 4), (6, 7)]  # a gap in the frames ends a run
    with pytest.raises(InvalidInputError, match=r"expected one flag per frame \(3\), got 2"):
        alert_intervals([0, 1, 2], [True, False])


# ---------------------------------------------------------------------- calibration
@pytest.mark.parametrize("smoothing,sigma,contamination", [("centred", 3.0, 0.05), ("causal", 4.0, 0.1),
                                                           ("centred", 0.0, 0.02)])
def test_calibrate_leave_videos_out_is_the_hand_quantile(normal, normal_index, smoothing, sigma, contamination):
    frames, feats = normal
    scorer = StreamScorer(normal_index, GridMeansPerFrame(), T=T, sigma=sigma, smoothing=smoothing)
    got = scorer.calibrate(feats, contamination)
    raw = leave_videos_out_oracle(normal_index, feats)
    smoothed = np.concatenate([oracle_smooth(r, sigma, smoothing) for r in raw])
    want = np.quantile(smoothed, 1 - contamination)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15) and scorer.threshold == got
    # a mapping name -> features is the same videos
    assert scorer.calibrate({f"v{i}": f for i, f in enumerate(feats)}, contamination) == got
    # the index itself would see each snippet at distance 0: far lower
    in_sample = np.quantile(np.concatenate([oracle_smooth(normal_index.score(f).astype(np.float64), sigma, smoothing)
                                            for f in feats]), 1 - contamination)
    assert in_sample < want


def test_calibrate_uses_the_detectors_leave_videos_out(normal, normal_index):
    """sigma 0: the threshold is the quantile of LLSHDetector's held-out scores (same layers, folds)."""
    from llsh_index.sklearn import LLSHDetector

    _, feats = normal
    x = np.concatenate(feats)
    vid = np.repeat(np.arange(len(feats)), [len(f) for f in feats])
    det = LLSHDetector(n_tables=4, n_bits=6, seed=3, train=False, contamination=0.05).fit(x, video_ids=vid)
    scorer = StreamScorer(normal_index, GridMeans(), T=T, sigma=0)
    assert scorer.calibrate(feats, 0.05) == pytest.approx(np.quantile(det.held_out_scores_, 0.95), rel=1e-12)


def test_calibrate_held_out_videos_sets_what_the_stream_alerts_on(normal, normal_index):
    """Held-out normal videos with scoring options: the threshold is the hand quantile, and streaming
    those videos' frames alerts on exactly the frames above it (the scores the quantile was taken on)."""
    frames, feats = normal
    rng = np.random.default_rng(24)
    new = [_video(rng, 2 * n)[:n] for n in (40, 31, 27)]
    kw = dict(mode="light", n_probes=2, reduce="mean")
    scorer = StreamScorer(normal_index, GridMeansPerFrame(), T=T, sigma=3.0, **kw)
    got = scorer.calibrate([snippets(f) for f in new], 0.1, held_out=True)
    smoothed = [oracle_smooth(normal_index.score(snippets(f), **kw).astype(np.float64), 3.0) for f in new]
    want = np.quantile(np.concatenate(smoothed), 0.9)
    assert got == pytest.approx(want, rel=1e-12)
    alerts = []
    for f in new:
        outs = [scorer.push(f), scorer.flush()]
        alerts.append(np.concatenate([o.alerts for o in outs]))
    alerts = np.concatenate(alerts)
    np.testing.assert_array_equal(alerts, np.concatenate(smoothed) > got)
    assert abs(alerts.mean() - 0.1) < 0.02  # about `contamination` of those frames
    plain = StreamScorer(normal_index, GridMeansPerFrame(), T=T, sigma=3.0)
    assert plain.calibrate([snippets(f) for f in new], 0.1, held_out=True) != pytest.approx(got)  # options count


def test_calibrate_from_a_feature_file(tmp_path, normal, normal_index):
    frames, feats = normal
    names = [f"train_{i:02d}" for i in range(len(feats))]
    meta = dict(GridMeans().describe(), T=T, s=1, clamp=True)
    path = str(tmp_path / "train.npz")
    save_features(path, dict(zip(names, feats)), meta, n_frames_by_video={v: len(f) for v, f in zip(names, frames)},
                  frame_index_by_video={v: np.arange(len(f)) for v, f in zip(names, frames)})
    scorer = StreamScorer(normal_index, GridMeans(), T=T, sigma=3.0)
    assert scorer.calibrate(load_feature_file(path), 0.05) == scorer.calibrate(feats, 0.05)
    with pytest.raises(ConfigError, match="extracted with T 5, the stream scores with T 7"):
        StreamScorer(normal_index, GridMeans(), T=7).calibrate(load_feature_file(path))
    # unclamped features: fewer snippets than frames
    unclamped = dict(n_frames_by_video={"a": len(feats[0]), "b": len(feats[1])},
                     frame_index_by_video={"a": np.arange(2, len(feats[0]) - 2), "b": np.arange(2, len(feats[1]) - 2)})
    save_features(path, {"a": feats[0][2:-2], "b": feats[1][2:-2]}, dict(meta, clamp=False), **unclamped)
    with pytest.raises(ConfigError, match="extracted with clamp False, the stream scores with clamp True"):
        scorer.calibrate(load_feature_file(path))
    save_features(path, {"a": feats[0][2:-2], "b": feats[1][2:-2]}, meta, **unclamped)
    with pytest.raises(InvalidInputError,
                       match=r"one snippet per frame, got 26 snippets for the 30 frames of video 'a'"):
        scorer.calibrate(load_feature_file(path), held_out=True)


def test_calibrate_warns_of_frames_labelled_anomalous(tmp_path, normal, normal_index):
    """A feature file whose labels mark frames anomalous (a test split given as normal video) is used
    as given, with a UserWarning naming the videos and counts (as `fit` warns); all-0 labels: none."""
    import warnings

    frames, feats = normal
    names = [f"test_{i:02d}" for i in range(len(feats))]
    labels = {v: np.zeros(len(f), np.uint8) for v, f in zip(names, feats)}
    labels["test_01"][4:24] = 1
    labels["test_07"][:3] = 1
    meta = dict(GridMeans().describe(), T=T, s=1, clamp=True)
    path = str(tmp_path / "test.npz")
    save_features(path, dict(zip(names, feats)), meta, labels_by_video=labels)
    scorer = StreamScorer(normal_index, GridMeans(), T=T, sigma=3.0)
    want = scorer.calibrate(feats, 0.05)
    with pytest.warns(UserWarning) as caught:
        assert scorer.calibrate(load_feature_file(path), 0.05) == want
    assert [str(w.message) for w in caught] == [
        "StreamScorer.calibrate: the calibration videos contain frames labelled anomalous (23 frames in 2 of 12 "
        "videos: test_01 (20), test_07 (3)); the threshold counts them as normal; calibrate on normal (training "
        "split) videos"]
    save_features(path, dict(zip(names, feats)), meta, labels_by_video={v: 0 * lab for v, lab in labels.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scorer.calibrate(load_feature_file(path), 0.05) == want


def test_calibrate_at_the_miss_value_alerts_on_misses():
    """Normal videos that miss every table smooth to the miss value: the threshold goes just below it
    (with a warning), so a window of misses alerts rather than never."""
    lsh = LearnableLSHIndex(24, n_tables=2, n_bits=32, seed=0).add(np.random.default_rng(0).random((50, 24)))
    scorer = StreamScorer(lsh, GridMeans(), T=T, sigma=3.0)
    far = [np.random.default_rng(10 + i).random((30, 24)).astype(np.float32) for i in range(2)]
    miss = float(np.float32(lsh.default_miss_value()))
    assert (lsh.score(np.concatenate(far)) == np.float32(miss)).all()  # the oracle's premise
    with pytest.warns(UserWarning, match="100% of the calibration frames score the miss value"):
        got = scorer.calibrate(far, 0.01, held_out=True)
    assert miss * (1 - 1e-6) < got < miss
    assert (oracle_smooth(np.full(40, miss), 3.0) > got).all()


def test_calibrate_errors_are_typed(normal, normal_index):
    _, feats = normal
    scorer = StreamScorer(normal_index, GridMeans(), T=T, sigma=3.0, threshold=0.25)
    for bad in (0, 0.6, -0.1, float("nan"), True, "0.1"):
        with pytest.raises(ConfigError, match=r"contamination: expected a number in \(0, 0.5\], got"):
            scorer.calibrate(feats, bad)
    with pytest.raises(ConfigError, match="held_out: expected True or False, got str"):
        scorer.calibrate(feats, held_out="yes")
    with pytest.raises(InvalidInputError, match="at least 2 videos .* got 1"):
        scorer.calibrate(feats[:1])
    with pytest.raises(InvalidInputError, match=r"expected the features the index was built on \(\d+ snippets\), "
                                                r"got \d+ snippets of 3 videos"):
        scorer.calibrate(feats[:3])
    with pytest.raises(InvalidInputError, match=r"expected \(n_frames >= 1, 24\) features for video #1 .* got shape "
                                                r"\(24, 12\)"):
        scorer.calibrate([feats[0], feats[1][:, :12]], held_out=True)
    with pytest.raises(InvalidInputError, match="got shape \\(0, 24\\)"):
        scorer.calibrate({"empty": np.zeros((0, 24))}, held_out=True)
    bad = feats[0].copy()
    bad[3, 4] = np.nan
    with pytest.raises(InvalidInputError, match="expected finite features, got NaN or inf in video v"):
        scorer.calibrate({"v": bad}, held_out=True)
    with pytest.raises(InvalidInputError, match="one video: \\[array\\]\\), got ndarray"):
        scorer.calibrate(feats[0], held_out=True)
    with pytest.raises(InvalidInputError, match="at least one video"):
        scorer.calibrate([], held_out=True)
    assert scorer.threshold == 0.25  # a refused call keeps the threshold the scorer had

    class Norms:  # a scorer without empty_like (as the baselines): held-out videos only
        def score(self, x):
            return np.linalg.norm(np.asarray(x), axis=1)

    other = StreamScorer(Norms(), GridMeans(), T=T, sigma=0)
    with pytest.raises(ConfigError, match="leave-videos-out needs an index with empty_like\\(\\).* got Norms"):
        other.calibrate(feats)
    assert other.calibrate(feats, 0.5, held_out=True) == pytest.approx(
        np.quantile(np.linalg.norm(np.concatenate(feats), axis=1), 0.5), rel=1e-6)


# ---------------------------------------------------------------------- CLI
@pytest.fixture
def cli(tmp_path, monkeypatch, normal, normal_index):
    """`llsh-index stream` on a fake camera (test video frames) with GridMeans in EfficientNet-Lite0's place;
    returns main's runner, the video's frames and the saved index / feature file paths."""
    import llsh_index.video as video
    from llsh_index.cli import main

    frames = _video(np.random.default_rng(25), 90)
    monkeypatch.setattr(video, "iter_frames", lambda source: iter(frames))
    monkeypatch.setattr(video, "EfficientNetLite0Extractor", lambda device="cpu": GridMeansPerFrame())
    normal_index.save(str(tmp_path / "i.llsh"))
    train_frames, feats = normal
    names = [f"train_{i:02d}" for i in range(len(feats))]
    save_features(str(tmp_path / "train.npz"), dict(zip(names, feats)),
                  dict(GridMeans().describe(), T=T, s=1, clamp=True), n_frames_by_video={v: len(f) for v, f in zip(names, train_frames)})

    def stream(*extra, capsys):
        capsys.readouterr()
        rc = main(["stream", "--index", str(tmp_path / "i.llsh"), "--video", "rtsp://camera", "--T", str(T),
                   "--sigma", "3", *extra])
        return (rc,) + tuple(capsys.readouterr())

    return stream, frames, tmp_path


def _alert_csv(out):
    lines = out.strip().splitlines()
    assert lines[0] == "frame,score,raw,alert"
    rows = [line.split(",") for line in lines[1:]]
    assert all(r[3] in ("0", "1") for r in rows)
    return np.array([int(r[0]) for r in rows]), np.array([float(r[1]) for r in rows]), np.array([r[3] == "1" for r in rows])


def _summary(flags, threshold):
    runs = runs_by_hand(flags)
    spans = ", ".join(f"{a}-{b}" for a, b in runs)
    return (f"alerts: {int(np.sum(flags))} of {len(flags)} frames above threshold {threshold:.6g}, in {len(runs)} "
            f"interval{'' if len(runs) == 1 else 's'}" + (f" (frames {spans})" if runs else ""))


def test_cli_stream_threshold_adds_the_alert_column_and_intervals(cli, normal_index, capsys):
    stream, frames, _ = cli
    want, _ = oracle(normal_index, GridMeans(), frames, T, 1, 3.0)
    ranked = np.sort(want)
    threshold = float((ranked[60] + ranked[61]) / 2)  # 29 frames above, none within rounding of it
    rc, out, err = stream("--threshold", repr(threshold), capsys=capsys)
    assert rc == 0
    f, scores, alerts = _alert_csv(out)
    assert f.tolist() == list(range(90))
    np.testing.assert_allclose(scores, want, rtol=1e-5)
    np.testing.assert_array_equal(alerts, want > threshold)
    assert len(runs_by_hand(alerts)) >= 2 and alerts.sum() == 29  # runs across pushes (one frame each), joined
    assert err.strip().splitlines()[-1] == _summary(want > threshold, threshold)
    # above every score: a column of 0 and no interval
    rc, out, err = stream("--threshold", "1e9", capsys=capsys)
    assert rc == 0 and not _alert_csv(out)[2].any()
    assert err.strip().splitlines()[-1] == "alerts: 0 of 90 frames above threshold 1e+09, in 0 intervals"
    # without a threshold: the three columns as before
    rc, out, err = stream(capsys=capsys)
    assert rc == 0 and out.splitlines()[0] == "frame,score,raw" and "alerts:" not in err


@pytest.mark.parametrize("held_out", [False, True])
def test_cli_stream_calibrate(cli, normal, normal_index, capsys, held_out):
    stream, frames, tmp_path = cli
    _, feats = normal
    if held_out:  # a held-out file: other normal videos, scored by the index itself
        rng = np.random.default_rng(26)
        new = {f"new_{i}": snippets(_video(rng, 2 * n)[:n]) for i, n in enumerate((40, 31, 27))}
        save_features(str(tmp_path / "held.npz"), new, dict(GridMeans().describe(), T=T, s=1, clamp=True))
        raw = [normal_index.score(f).astype(np.float64) for f in new.values()]
        args, n_videos = ["--calibrate", str(tmp_path / "held.npz"), "--held-out"], 3
    else:
        raw = leave_videos_out_oracle(normal_index, feats)
        args, n_videos = ["--calibrate", str(tmp_path / "train.npz")], 12
    threshold = np.quantile(np.concatenate([oracle_smooth(r, 3.0) for r in raw]), 0.9)
    rc, out, err = stream(*args, "--contamination", "0.1", capsys=capsys)
    assert rc == 0, err
    lines = err.strip().splitlines()
    n = sum(len(r) for r in raw)
    assert lines[0].startswith(f"threshold {threshold:.6g}: the 0.9 quantile of the smoothed scores of {n} frames "
                               f"of {n_videos} normal videos")
    want, _ = oracle(normal_index, GridMeans(), frames, T, 1, 3.0)
    _, _, alerts = _alert_csv(out)
    np.testing.assert_array_equal(alerts, want > threshold)
    assert lines[-1] == _summary(want > threshold, threshold)


def test_cli_stream_calibrate_warns_of_frames_labelled_anomalous(cli, normal, normal_index, capsys):
    """stream --calibrate on a file whose labels mark frames anomalous: a printed warning naming the
    videos and counts (calibrate()'s UserWarning not printed too), then the same threshold as unlabelled."""
    import warnings

    stream, _, tmp_path = cli
    _, feats = normal
    names = [f"train_{i:02d}" for i in range(len(feats))]
    labels = {v: np.zeros(len(f), np.uint8) for v, f in zip(names, feats)}
    labels["train_03"][:15] = 1
    labelled = str(tmp_path / "labelled.npz")
    save_features(labelled, dict(zip(names, feats)), dict(GridMeans().describe(), T=T, s=1, clamp=True),
                  labels_by_video=labels)
    rc, out_plain, err_plain = stream("--calibrate", str(tmp_path / "train.npz"), capsys=capsys)
    assert rc == 0 and "warning" not in err_plain
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rc, out, err = stream("--calibrate", labelled, capsys=capsys)
    assert rc == 0, err
    lines = err.strip().splitlines()
    assert lines[0] == (f"warning: --calibrate {labelled}: the calibration features contain frames labelled anomalous "
                        f"(15 frames in 1 of 12 videos: train_03 (15)); the threshold counts them as normal; calibrate "
                        f"on normal (training split) videos")
    assert lines[1] == err_plain.strip().splitlines()[0].replace(str(tmp_path / "train.npz"), labelled)
    assert out == out_plain


def test_cli_stream_alert_options_are_checked(cli, capsys):
    stream, _, tmp_path = cli
    train = str(tmp_path / "train.npz")
    cases = [(["--threshold", "nan"], "threshold: expected a finite number .* got nan"),
             (["--threshold", "inf"], "threshold: expected a finite number .* got inf"),
             (["--threshold", "0.1", "--calibrate", train], "expected either --threshold or --calibrate .* got both"),
             (["--calibrate", train, "--contamination", "0.7"], r"contamination: expected a number in \(0, 0.5\], got 0.7"),
             (["--calibrate", train, "--contamination", "0"], r"contamination: expected a number in \(0, 0.5\], got 0.0"),
             (["--contamination", "0.1"], "--contamination sets how --calibrate .* without --calibrate"),
             (["--threshold", "1", "--held-out"], "--held-out sets how --calibrate .* without --calibrate"),
             (["--calibrate", str(tmp_path / "nowhere.npz")], "nowhere.npz")]
    import re

    for args, msg in cases:
        rc, out, err = stream(*args, capsys=capsys)
        assert rc == 2 and out == "" and re.search(msg, err), (args, err)


def test_calibrate_trained_index_is_cross_fitted(normal):
    """A trained index's layers have seen its videos: each fold of videos is scored by layers trained
    afresh (the same initial layers, settings and seed) on the other videos only, as LLSHDetector does."""
    frames, feats = normal
    train = dict(iterations=20, lr=0.1, batch_size=32, queue_size=64, temperature=0.2, project_pcs=4, progress=False)
    x = np.concatenate(feats)
    vid = np.repeat(np.arange(len(feats)), [len(f) for f in feats])
    trained = LearnableLSHIndex(24, n_tables=4, n_bits=6, seed=3).fit(x, video_ids=vid, **train).add(x)
    scorer = StreamScorer(trained, GridMeansPerFrame(), T=T, sigma=3.0)
    got = scorer.calibrate(feats, 0.1)
    raw = [None] * len(feats)
    for fold in range(5):  # min(5 folds, 12 videos): video v in fold v % 5
        keep = [v for v in range(len(feats)) if v % 5 != fold]
        rest = np.concatenate([feats[v] for v in keep])
        rest_vid = np.repeat(keep, [len(feats[v]) for v in keep])
        by_hand = LearnableLSHIndex(24, n_tables=4, n_bits=6, seed=3).fit(rest, video_ids=rest_vid, **train).add(rest)
        for v in range(fold, len(feats), 5):
            raw[v] = by_hand.score(feats[v]).astype(np.float64)
    want = np.quantile(np.concatenate([oracle_smooth(r, 3.0) for r in raw]), 0.9)
    assert got == pytest.approx(want, rel=1e-12)
    # not the trained layers' own leave-videos-out quantile
    in_sample = np.quantile(np.concatenate([oracle_smooth(r, 3.0) for r in leave_videos_out_oracle(trained, feats)]),
                            0.9)
    assert got != pytest.approx(in_sample, rel=1e-6)
