"""LLSHDetector against scikit-learn's estimator checks and the index it wraps."""
import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from llsh_index import LearnableLSHIndex
from llsh_index.sklearn import LLSHDetector

# The small fits here leave many held-out rows missing every table: the calibration warning that says
# so is asserted where it is the subject (pytest.warns sees it whatever this filter); elsewhere it is noise.
# scikit-learn's estimator checks call fit(X, y): the warning that y is ignored is asserted where it is the subject.
pytestmark = [pytest.mark.filterwarnings("ignore:LLSHDetector.fit. .* miss every hash table:UserWarning"),
              pytest.mark.filterwarnings("ignore:LLSHDetector.fit. y is ignored:UserWarning")]

FAST = dict(n_tables=4, n_bits=8, iterations=2, batch_size=16, queue_size=32, n_neighbors=3)


# These three checks require predict() on the training data to flag exactly `contamination` of it.
# LLSHDetector calibrates offset_ on leave-one-out training scores instead (a training row matches
# itself at distance 0, so in-sample calibration would flag about half of new normal data, see
# test_detector_matches_the_index_and_contamination); the checks do not apply.
LOO_CALIBRATION = "offset_ is calibrated on leave-one-out training scores, not in-sample ones"
EXPECTED = {"check_outliers_train": LOO_CALIBRATION, "check_outliers_fit_predict": LOO_CALIBRATION}


@parametrize_with_checks([LLSHDetector(train=False, n_tables=4, n_bits=8), LLSHDetector(**FAST)],
                         expected_failed_checks=lambda est: EXPECTED)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_detector_matches_the_index_and_contamination(rng):
    x = rng.standard_normal((500, 16)).astype(np.float32)
    det = LLSHDetector(train=False, n_tables=4, n_bits=8, contamination=0.1).fit(x)
    ref = LearnableLSHIndex(16, n_tables=4, n_bits=8).add(x)
    np.testing.assert_allclose(det.score_samples(x[:50]), -ref.score(x[:50]).astype(np.float64))
    fresh = rng.standard_normal((2000, 16)).astype(np.float32)  # new data from the same distribution
    assert abs((det.predict(fresh) == -1).mean() - 0.1) <= 0.04
    assert det.decision_function(x[:5]).shape == (5,)
    params = det.get_params()
    assert params["n_bits"] == 8 and params["contamination"] == 0.1


def test_detector_flags_another_population(rng):
    from sklearn.metrics import roc_auc_score

    a, b = rng.standard_normal((2, 32)) * 2
    x = a + 0.5 * rng.standard_normal((400, 32))
    normal = a + 0.5 * rng.standard_normal((100, 32))
    other = b + 0.5 * rng.standard_normal((100, 32))
    det = LLSHDetector(train=False, n_tables=8, n_bits=16, contamination=0.05).fit(x)
    s = det.score_samples(np.concatenate([normal, other]))
    assert roc_auc_score(np.r_[np.ones(100), np.zeros(100)], s) > 0.95
    with pytest.warns(UserWarning, match="missed every hash table"):  # the other population misses every bucket
        assert (det.predict(other) == -1).mean() >= 0.9
    assert (det.predict(normal) == 1).mean() >= 0.8


@pytest.mark.parametrize("bad", [0.0, 0.7, -1, float("nan"), True, "auto", None])
def test_contamination_is_checked(rng, bad):
    from llsh_index import ConfigError

    with pytest.raises(ConfigError, match=r"contamination: expected a number in \(0, 0.5\]"):
        LLSHDetector(train=False, contamination=bad).fit(rng.standard_normal((20, 4)))


def test_numpy_contamination_is_a_number(rng):
    x = rng.standard_normal((60, 4))
    a = LLSHDetector(train=False, n_tables=4, n_bits=8, contamination=np.float32(0.25)).fit(x)
    b = LLSHDetector(train=False, n_tables=4, n_bits=8, contamination=0.25).fit(x)
    assert a.offset_ == b.offset_


def test_use_before_fit_is_both_not_fitted_errors(rng):
    import sklearn.exceptions

    import llsh_index

    det = LLSHDetector()
    for call in (det.score_samples, det.decision_function, det.predict):
        with pytest.raises(llsh_index.NotFittedError) as info:
            call(rng.standard_normal((3, 4)))
        assert isinstance(info.value, sklearn.exceptions.NotFittedError) and "LLSHDetector" in str(info.value)


@pytest.mark.parametrize("mode", ["mean", "light", "squared"])
@pytest.mark.parametrize("n_probes,miss_probes,reduce", [(1, 0, "min"), (4, 0, "min"), (1, 12, "min"), (3, 30, "min"),
                                                         (1, 0, "mean"), (1, 12, "mean")])
def test_leave_one_out_offset_matches_rebuilt_indexes(rng, mode, n_probes, miss_probes, reduce):
    # oracle: for each training row, an index of the other rows (same layers) scores it
    centres = rng.standard_normal((3, 12)) * 2
    x = (centres[rng.integers(0, 3, 70)] + 0.7 * rng.standard_normal((70, 12))).astype(np.float32)
    det = LLSHDetector(train=False, n_tables=3, n_bits=10, mode=mode, n_probes=n_probes, miss_probes=miss_probes,
                       reduce=reduce, contamination=0.2).fit(x)
    want = np.array([det.index_.empty_like().add(np.delete(x, i, axis=0)).score(
        x[i:i + 1], n_probes=n_probes, miss_probes=miss_probes, reduce=reduce)[0] for i in range(len(x))])
    got = det._leave_one_out_scores(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the cases occur: rows alone in every bucket they sit in (their own key empties when they leave),
    # and rows whose leave-one-out score the probes change
    assert (det.index_.partial_scores(x)["count"] == 1).all(axis=1).any()
    if n_probes > 1 or miss_probes or reduce != "min":
        plain = [det.index_.empty_like().add(np.delete(x, i, axis=0)).score(x[i:i + 1])[0] for i in range(len(x))]
        assert (want != np.array(plain)).any()
    assert det.offset_ == pytest.approx(np.percentile(-want, 20.0), rel=1e-5, abs=1e-6)
    np.testing.assert_array_equal(det.score_samples(x[:9]),
                                  -det.index_.score(x[:9], n_probes=n_probes, miss_probes=miss_probes, reduce=reduce))


@pytest.mark.parametrize("params", [dict(n_probes=0), dict(miss_probes=1), dict(n_probes=4, miss_probes=3),
                                    dict(miss_probes=-2), dict(reduce="max")])
def test_probe_settings_are_checked(rng, params):
    with pytest.raises(ValueError, match="probes|reduce"):
        LLSHDetector(train=False, **params).fit(rng.standard_normal((20, 4)))


def test_bad_input_and_settings_are_the_package_typed_errors(rng):
    """scikit-learn's own checks raised its plain ValueError / TypeError; they are the package's typed
    errors now (still ValueError / TypeError, with scikit-learn's message), and a string is no switch."""
    import scipy.sparse

    from llsh_index.errors import ConfigError, InvalidDTypeError, InvalidInputError

    x = rng.standard_normal((30, 6))
    bad_nan = x.copy()
    bad_nan[3, 2] = np.nan
    for X, message in ((bad_nan, "NaN"), (np.full((30, 6), np.inf), "NaN or inf in X .row 0."),
                       (x[:1], "minimum of 2"), (x[:, :1], "minimum of 2 is required"),
                       (x[:, 0], "expected a 2-D array .n_samples, n_features., got shape .30,."),
                       (np.array([["a", "b"], ["c", "d"]]), "could not convert|dtype")):
        with pytest.raises(InvalidInputError, match=message):
            LLSHDetector(train=False, n_tables=2, n_bits=4).fit(X)
    with pytest.raises(InvalidDTypeError, match="Sparse data was passed"):
        LLSHDetector(train=False, n_tables=2, n_bits=4).fit(scipy.sparse.csr_matrix(x))
    det = LLSHDetector(train=False, n_tables=2, n_bits=4).fit(x)
    with pytest.raises(InvalidInputError, match="X has 5 features, but LLSHDetector is expecting 6"):
        det.predict(x[:, :5])
    with pytest.raises(ConfigError, match="Invalid parameter 'foo'"):
        det.set_params(foo=1)
    for value in ("no", 0, None):
        with pytest.raises(ConfigError, match=f"train: expected True or False, got .*{value!r}"):
            LLSHDetector(train=value, n_tables=2, n_bits=4).fit(x)
    with pytest.raises(ConfigError, match=r"miss_value: expected a finite number >= 0 .* got -5"):
        LLSHDetector(train=False, miss_value=-5).fit(x)

def test_a_failed_refit_leaves_the_fitted_detector_as_it_was(rng):
    """A bad setting found after validate_data had reset n_features_in_ left a detector that could
    score nothing (sklearn's 'expecting 17 features' on its own 16-feature data)."""
    x16, x17 = rng.standard_normal((60, 16)), rng.standard_normal((60, 17))
    det = LLSHDetector(train=False, n_tables=4, n_bits=8).fit(x16)
    want = det.score_samples(x16[:10])
    det.set_params(contamination=0.9)
    with pytest.raises(ValueError, match="contamination"):
        det.fit(x17)
    assert det.n_features_in_ == 16 and det.contamination == 0.9
    np.testing.assert_array_equal(det.score_samples(x16[:10]), want)


# ------------------------------------------------------------------ calibration on held-out videos
def _videos(rng, n_videos, dim=12, lengths=(8, 20)):
    """Video-like rows: each video a slow random walk around its own centre (neighbouring snippets
    near-duplicates), labelled by names whose sorted order is not their order of appearance."""
    names = [f"v{i:02d}" for i in rng.permutation(n_videos)]
    xs, labels = [], []
    for name in names:
        n = int(rng.integers(*lengths))
        walk = np.cumsum(0.05 * rng.standard_normal((n, dim)), axis=0)
        xs.append(rng.standard_normal(dim) + walk)
        labels += [name] * n
    return np.concatenate(xs).astype(np.float32), np.array(labels)


def _leave_videos_out_oracle(x, labels, make_index, **score_kw):
    """Folds: the videos in order of first appearance, video i in fold i % min(10, n_videos); each
    fold's rows scored by an index (make_index()) holding only the other folds' rows."""
    order = list(dict.fromkeys(labels.tolist()))
    k = min(10, len(order))
    fold = np.array([order.index(v) % k for v in labels])
    want = np.empty(len(x))
    for f in range(k):
        held = fold == f
        want[held] = make_index().add(x[~held]).score(x[held], **score_kw)
    return want


@pytest.mark.parametrize("n_videos", [3, 13])
@pytest.mark.parametrize("mode,miss_value", [("mean", None), ("light", None), ("squared", None), ("mean", 0.9)])
@pytest.mark.parametrize("n_probes,miss_probes,reduce", [(1, 0, "min"), (3, 30, "min"), (1, 12, "mean")])
def test_video_offset_is_the_quantile_of_leave_videos_out_scores(rng, n_videos, mode, miss_value, n_probes,
                                                                  miss_probes, reduce):
    x, labels = _videos(rng, n_videos)
    settings = dict(n_tables=3, n_bits=10, mode=mode, miss_value=miss_value)
    det = LLSHDetector(train=False, n_probes=n_probes, miss_probes=miss_probes, reduce=reduce, contamination=0.2,
                       **settings).fit(x, video_ids=labels)
    # an independent rebuild: untrained layers come from the seed alone
    want = _leave_videos_out_oracle(x, labels, lambda: LearnableLSHIndex(12, store_codes=mode == "mean", seed=0,
                                                                         **settings),
                                    n_probes=n_probes, miss_probes=miss_probes, reduce=reduce)
    assert det.calibration_ == "leave-videos-out"
    assert det.offset_ == pytest.approx(np.percentile(-want, 20.0), rel=1e-5, abs=1e-6)
    # the case matters: a left-out snippet still finds its neighbours, so leave-one-out scores sit lower
    assert np.median(det._leave_one_out_scores(x)) < np.median(want)
    # scoring itself is unchanged: the index of all the rows
    np.testing.assert_array_equal(det.score_samples(x[:9]),
                                  -det.index_.score(x[:9], n_probes=n_probes, miss_probes=miss_probes, reduce=reduce))


def test_video_calibration_keeps_the_trained_layers(rng):
    x, labels = _videos(rng, 5, lengths=(30, 40))
    det = LLSHDetector(contamination=0.1, **FAST).fit(x, video_ids=labels)
    assert det.index_.is_trained
    fresh = LearnableLSHIndex(12, n_tables=4, n_bits=8, seed=0)  # the untrained layers differ
    assert not np.array_equal(fresh.encode(x[:5]), det.index_.encode(x[:5]))
    want = _leave_videos_out_oracle(x, labels, det.index_.empty_like)
    assert det.offset_ == pytest.approx(np.percentile(-want, 10.0), rel=1e-5, abs=1e-6)


def test_a_single_video_falls_back_to_leave_one_out_and_warns(rng):
    x, _ = _videos(rng, 1, lengths=(40, 41))
    with pytest.warns(UserWarning, match="single video.*leave-one-out"):
        det = LLSHDetector(train=False, n_tables=4, n_bits=8).fit(x, video_ids=np.zeros(len(x), int))
    plain = LLSHDetector(train=False, n_tables=4, n_bits=8).fit(x)
    assert det.calibration_ == plain.calibration_ == "leave-one-out"
    assert det.offset_ == plain.offset_


def _ped2():
    from llsh_index.datasets import load_ped2_demo

    demo = load_ped2_demo(None)
    names = sorted(demo.train)
    x = np.concatenate([demo.train[v] for v in names]).astype(np.float32)
    vids = np.concatenate([np.full(len(demo.train[v]), i) for i, v in enumerate(names)])
    xt, normal = [], []
    for v in sorted(demo.test):
        lab = np.asarray(demo.test_labels[v])
        centre = demo.frame_index["test"][v]  # the frame each snippet (16 frames) is centred on
        frames = np.clip(centre[:, None] + np.arange(-8, 9), 0, len(lab) - 1)
        xt.append(demo.test[v])
        normal.append((lab[frames] == 0).all(axis=1))  # every frame the snippet covers is normal
    return x, vids, np.concatenate(xt).astype(np.float32), np.concatenate(normal)


def test_ped2_video_calibration_flags_about_contamination_of_new_normal_videos():
    """On video, leave-one-out training scores are far too low (a left-out snippet keeps its
    near-duplicate neighbours): the old offset_ flagged every normal test snippet of Ped2."""
    x, vids, xt, normal = _ped2()
    assert normal.sum() > 200
    # new normal videos of the same scene: fit on the even training videos, predict the odd ones
    even = vids % 2 == 0
    det = LLSHDetector(train=False, contamination=0.1).fit(x[even], video_ids=vids[even])
    assert abs((det.predict(x[~even]) == -1).mean() - 0.1) <= 0.05  # measured 0.090
    loo = np.percentile(-det._leave_one_out_scores(x[even]), 10.0)  # the old offset_
    assert (det.score_samples(x[~even]) < loo).mean() > 0.9  # measured 1.0
    # the test videos: normal snippets no longer all flagged
    det = LLSHDetector(train=False, contamination=0.1).fit(x, video_ids=vids)
    flagged = (det.predict(xt[normal]) == -1).mean()
    assert flagged < 0.6  # measured 0.31
    loo = np.percentile(-det._leave_one_out_scores(x), 10.0)
    assert (det.score_samples(xt[normal]) < loo).mean() >= 0.6  # the old offset_ fails the bound (measured 1.0)


# ------------------------------------------------------------------ rows that miss every table
def test_scores_that_all_miss_warn(rng):
    import warnings

    x = rng.standard_normal((200, 16))
    det = LLSHDetector(train=False, n_tables=4, n_bits=24).fit(x)
    far = rng.standard_normal((30, 16)) * 3 + 5
    oracle = LearnableLSHIndex(16, n_tables=4, n_bits=24).add(x)
    assert (oracle.partial_scores(far)["count"] == 0).all()  # the oracle: each row misses each table
    with pytest.warns(UserWarning, match="all 30 rows missed every hash table.*miss_probes"):
        s = det.score_samples(far)
    assert (s == -np.float32(oracle.default_miss_value())).all()
    with pytest.warns(UserWarning, match="missed every hash table"):
        det.predict(far)
    with pytest.warns(UserWarning, match="held-out training rows miss every hash table"):  # fit's own warning
        probed = LLSHDetector(train=False, n_tables=4, n_bits=24, miss_probes=200).fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        det.score_samples(far[:1])  # one row: no ranking to lose
        det.score_samples(np.vstack([far, x[:1]]))  # one row hits
        det.score_samples(np.vstack([x[3], x[3]]))  # equal scores, but they hit
        det.score_samples(x[:20])
        assert np.ptp(probed.score_samples(far)) > 0  # probing on a miss finds buckets for the same rows


def test_a_scaler_pipeline_that_misses_everything_warns():
    """The report: StandardScaler -> LLSHDetector(train=False) on Ped2 gave one constant score."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, _, xt, _ = _ped2()
    pipe = make_pipeline(StandardScaler(), LLSHDetector(train=False)).fit(x)
    with pytest.warns(UserWarning, match="missed every hash table"):
        s = pipe.score_samples(xt)
    assert np.unique(s).size == 1


# ------------------------------------------------------------------ video_ids errors
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("bad,match", [(lambda n: np.zeros(n - 1), "expected 60 labels"),
                                       (lambda n: np.zeros((n, 1)), "expected 60 labels"),
                                       (lambda n: np.r_[np.zeros(n - 1), np.nan], "finite labels"),
                                       (lambda n: np.array(["a"] * (n - 1) + [3], dtype=object), "one sortable type")])
def test_bad_video_ids_are_typed_errors(rng, train, bad, match):
    from llsh_index import InvalidInputError

    x = rng.standard_normal((60, 6))
    det = LLSHDetector(train=train, **(FAST if train else dict(n_tables=4, n_bits=8)))
    with pytest.raises(InvalidInputError, match=match):
        det.fit(x, video_ids=bad(60))
    assert not hasattr(det, "offset_")


def test_a_one_snippet_video_cannot_train_but_can_calibrate(rng):
    from llsh_index import InvalidInputError

    x = rng.standard_normal((60, 6))
    vids = np.r_[np.zeros(59, int), 1]
    with pytest.raises(InvalidInputError, match="at least 2 snippets"):
        LLSHDetector(**FAST).fit(x, video_ids=vids)
    det = LLSHDetector(train=False, n_tables=4, n_bits=8).fit(x, video_ids=vids)
    assert det.calibration_ == "leave-videos-out"


def test_held_out_rows_that_miss_put_the_threshold_just_above_the_miss_value(two_demo_videos):
    """When at least `contamination` of the held-out rows miss every table, the quantile is the miss
    value itself; offset_ then sits just above it, so a row that misses is an outlier (it was a tie
    at decision 0, i.e. an inlier: pure noise was not flagged), and fit warns with the share."""
    x, vid = two_demo_videos
    with pytest.warns(UserWarning, match=r"of the held-out training rows miss every hash table"):
        det = LLSHDetector(train=False, contamination=0.1).fit(x, video_ids=vid)
    miss = float(np.float32(det.index_.default_miss_value()))
    assert det.offset_ == np.nextafter(-miss, 0.0)
    noise = np.random.default_rng(0).normal(0, 50, (40, x.shape[1])).astype(np.float32)
    with pytest.warns(UserWarning, match="missed every hash table"):
        assert (det.predict(noise) == -1).all()
    assert (det.decision_function(x) >= 0).mean() > 0.5  # the training rows themselves stay inliers


# ------------------------------------------------------------------ device
def test_device_is_a_checked_parameter(rng):
    import llsh_index
    from llsh_index import ConfigError, CudaUnavailableError

    x = rng.standard_normal((40, 6)).astype(np.float32)
    assert LLSHDetector().get_params()["device"] == "cpu"
    det = LLSHDetector(train=False, n_tables=2, n_bits=6).fit(x)
    want = det.score_samples(x[:7])
    for bad in ("gpu", "cuda:x", 3):
        with pytest.raises(ConfigError, match=f"device: expected 'cpu', 'cuda' or 'cuda:N', got {str(bad)!r}"):
            det.set_params(device=bad).fit(x)
    if not llsh_index.cuda_available():
        with pytest.raises(CudaUnavailableError, match="device='cuda'"):
            det.set_params(device="cuda").fit(x)
    # a refit that fails keeps the fitted detector, on its device
    assert det.index_.device == "cpu"
    np.testing.assert_array_equal(det.score_samples(x[:7]), want)


@pytest.mark.parametrize("video,mode,probes", [(True, "mean", (1, 0, "min")), (True, "light", (3, 20, "mean")),
                                               (False, "mean", (1, 0, "min")), (False, "light", (1, 0, "min")),
                                               (False, "squared", (4, 12, "min")), (False, "mean", (1, 12, "mean"))])
def test_device_path_gives_the_cpu_paths_values(rng, monkeypatch, video, mode, probes):
    """The detector on a device index: tables as tensors, X copied over, keys and codes brought back for
    the leave-one-out arithmetic.  The fake engine (tests/fake_device.py) runs that tensor path on the
    CPU; the values must be the numpy path's, bit for bit (same C++ engine underneath)."""
    import warnings

    import torch

    import fake_device

    n_probes, miss_probes, reduce = probes
    x, labels = _videos(rng, 6, lengths=(20, 30))
    q = np.vstack([x[:15] + 0.05, rng.standard_normal((10, 12)) * 3 + 4]).astype(np.float32)  # the last miss
    kw = dict(FAST, n_tables=3, n_bits=10, mode=mode, n_probes=n_probes, miss_probes=miss_probes, reduce=reduce,
              contamination=0.2, train=video)
    fit_kw = {"video_ids": labels} if video else {}
    ref = LLSHDetector(**kw).fit(x, **fit_kw)
    fake_device.install(monkeypatch)
    dev = LLSHDetector(**kw).fit(x, **fit_kw)
    assert isinstance(dev.index_._tables["keys"], torch.Tensor)  # the device path was taken
    assert not isinstance(ref.index_._tables["keys"], torch.Tensor)
    assert dev.calibration_ == ref.calibration_ == ("cross-fitted-videos" if video else "leave-one-out")
    np.testing.assert_array_equal(dev.held_out_scores_, ref.held_out_scores_)
    assert isinstance(dev.held_out_scores_, np.ndarray) and dev.offset_ == ref.offset_
    got = dev.score_samples(q)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_array_equal(got, ref.score_samples(q))
    np.testing.assert_array_equal(dev.predict(q), ref.predict(q))
    # the oracle of the leave-one-out path, on the device index: rebuilt without each row
    loo = dev._leave_one_out_scores(x[:12])
    want = [dev.index_.empty_like().add(torch.from_numpy(np.delete(x, i, axis=0))).score(
        torch.from_numpy(x[i:i + 1]), n_probes=n_probes, miss_probes=miss_probes, reduce=reduce)[0].item()
        for i in range(12)]
    np.testing.assert_allclose(loo, want, rtol=1e-5, atol=1e-6)


def test_device_path_warns_when_every_row_misses(rng, monkeypatch):
    import fake_device

    fake_device.install(monkeypatch)
    x = rng.standard_normal((200, 16))
    det = LLSHDetector(train=False, n_tables=4, n_bits=24).fit(x)
    far = rng.standard_normal((30, 16)) * 3 + 5
    oracle = LearnableLSHIndex(16, n_tables=4, n_bits=24).add(x)
    assert (oracle.partial_scores(far)["count"] == 0).all()
    with pytest.warns(UserWarning, match="all 30 rows missed every hash table"):
        s = det.score_samples(far)
    assert (s == -np.float32(oracle.default_miss_value())).all()


def test_reversed_views_are_scored_like_their_copies(rng):
    """X[::-1] (negative strides, which validate_data passes through and torch.from_numpy refuses): the
    values of the copy, not torch's bare ValueError."""
    x = rng.standard_normal((60, 8)).astype(np.float32)
    rev, cols = x[::-1], x[:, ::-1]
    det = LLSHDetector(train=False, n_tables=3, n_bits=6).fit(rev)
    ref = LLSHDetector(train=False, n_tables=3, n_bits=6).fit(rev.copy())
    np.testing.assert_array_equal(det.held_out_scores_, ref.held_out_scores_)
    np.testing.assert_array_equal(det.score_samples(cols), ref.score_samples(cols.copy()))
    # the oracle: an index over the same rows, scored directly
    index = LearnableLSHIndex(8, n_tables=3, n_bits=6).add(rev.copy())
    np.testing.assert_array_equal(det.score_samples(x[::-2]), -index.score(x[::-2].copy()).astype(np.float64))


@pytest.mark.parametrize("video", [False, True])
def test_held_out_scores_are_float64_on_both_calibrations(rng, video):
    x, labels = _videos(rng, 4)
    det = LLSHDetector(train=False, n_tables=3, n_bits=8).fit(x, video_ids=labels if video else None)
    assert det.held_out_scores_.dtype == np.float64 and det.held_out_scores_.shape == (len(x),)


def test_training_settings_reach_fit(rng):
    """temperature, momentum, project_pcs and project_mean are passed to LearnableLSHIndex.fit as
    given: the detector's layers equal an index trained with the same settings (and differ from
    the defaults'), and a bad value is fit()'s ConfigError."""
    from sklearn.base import clone

    from llsh_index import ConfigError

    x, labels = _videos(rng, 4, lengths=(30, 40))
    extra = dict(temperature=0.3, momentum=0.9, project_pcs=3, project_mean=True)
    det = LLSHDetector(contamination=0.1, **FAST, **extra).fit(x, video_ids=labels)
    ref = LearnableLSHIndex(12, n_tables=4, n_bits=8, seed=0)
    ref.fit(x, video_ids=labels, iterations=2, batch_size=16, queue_size=32, n_neighbors=3, progress=False, **extra)
    np.testing.assert_array_equal(det.index_.encoder.weight.detach().numpy(), ref.encoder.weight.detach().numpy())
    cfg = det.index_.training_config_
    assert (cfg.temperature, cfg.momentum, cfg.project_pcs, cfg.project_mean) == (0.3, 0.9, 3, True)
    plain = LLSHDetector(contamination=0.1, **FAST).fit(x, video_ids=labels)
    assert not np.array_equal(plain.index_.encoder.weight.detach().numpy(), ref.encoder.weight.detach().numpy())
    assert clone(det).get_params()["project_pcs"] == 3
    with pytest.raises(ConfigError, match="temperature"):
        LLSHDetector(temperature=-1.0, **FAST).fit(x, video_ids=labels)


def _low_rank(rng, mixing, n):
    """Non-negative rows near an 8-dimensional subspace of R^64 (as CNN features: a few main directions)."""
    z = rng.standard_normal((n, mixing.shape[0]))
    return np.abs(z @ mixing + 0.3 * rng.standard_normal((n, mixing.shape[1]))).astype(np.float32)


def test_trained_calibration_is_cross_fitted_and_flags_contamination_of_new_normal_rows():
    """With train=True the layers (and the projection's principal directions) are fitted on the training
    rows, so even their leave-one-out scores are in-sample: calibration_folds=0 flags about twice
    `contamination` of new normal rows here (on MVTec-AD 41-70% at 0.1).  Cross-fitted: near 0.1."""
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((8, 64))
    x, fresh = _low_rank(rng, mixing, 300), _low_rank(rng, mixing, 4000)
    det = LLSHDetector(contamination=0.1, n_bits=8).fit(x)
    assert det.calibration_ == "cross-fitted"
    rate = (det.predict(fresh) == -1).mean()
    # offset_ is the 0.1 quantile of 300 held-out scores: its flag rate has sd sqrt(0.1 * 0.9 / 300) = 0.017,
    # the 4000 fresh rows add 0.005: 0.05 is about three of them
    assert abs(rate - 0.1) <= 0.05
    with pytest.warns(UserWarning, match="calibrated on layers trained on the same rows .calibration_folds=0"):
        in_sample = LLSHDetector(contamination=0.1, n_bits=8, calibration_folds=0).fit(x)
    assert in_sample.calibration_ == "leave-one-out"
    assert (in_sample.predict(fresh) == -1).mean() > rate + 0.05


@pytest.mark.parametrize("video", [False, True])
def test_cross_fitted_calibration_is_the_by_hand_quantile(rng, video):
    """offset_ recomputed independently: folds (rows shuffled by default_rng(seed), or videos v % k), layers
    trained on the other folds with the same settings and seed, those folds indexed, the held-out fold
    scored; the contamination quantile of the negated scores."""
    import warnings

    from llsh_index.training import FALLBACK_DEFAULTS

    if video:
        x, labels = _videos(rng, 7, lengths=(20, 30))
    else:
        x, labels = np.abs(rng.standard_normal((90, 12))).astype(np.float32), None
    kw = dict(n_tables=4, n_bits=8, seed=3, iterations=2, batch_size=16, queue_size=32, n_neighbors=3)
    det = LLSHDetector(contamination=0.15, calibration_folds=3, n_probes=2, **kw).fit(x, video_ids=labels)
    assert det.calibration_ == ("cross-fitted-videos" if video else "cross-fitted")
    n = len(x)
    if video:
        _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
        order = np.argsort(np.argsort(first))  # video ids by first appearance
        fold = order[inv] % 3
    else:
        fold = np.random.default_rng(3).permutation(np.arange(n) % 3)
    want = np.empty(n)
    train_kw = {} if video else {k: v for k, v in FALLBACK_DEFAULTS.items() if k not in ("iterations", "batch_size",
                                                                                         "queue_size", "n_neighbors")}
    for f in range(3):
        held = fold == f
        idx = LearnableLSHIndex(12, n_tables=4, n_bits=8, seed=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idx.fit(x[~held], video_ids=None if labels is None else np.asarray(labels)[~held], iterations=2,
                    batch_size=16, queue_size=32, n_neighbors=3, progress=False, **train_kw)
        idx.add(x[~held])
        want[held] = idx.score(x[held], n_probes=2)
    np.testing.assert_allclose(det.held_out_scores_, want, rtol=1e-6)
    assert det.offset_ == pytest.approx(np.percentile(-want, 15.0), rel=1e-6)
    # the final index is trained on all rows, as without cross-fitting
    ref = LLSHDetector(contamination=0.15, calibration_folds=0, n_probes=2, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(x, video_ids=labels)
    np.testing.assert_array_equal(det.score_samples(x[:20]), ref.score_samples(x[:20]))


def test_calibration_folds_is_checked(rng):
    from llsh_index.errors import ConfigError

    x = np.abs(rng.standard_normal((20, 4))).astype(np.float32)
    for bad in (1, -2, 2.5, True, "5"):
        with pytest.raises(ConfigError, match="calibration_folds"):
            LLSHDetector(calibration_folds=bad).fit(x)


def test_standardised_features_warn_that_raw_features_should_be_given(rng):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.abs(rng.standard_normal((200, 64)) + 2).astype(np.float32)
    with pytest.warns(UserWarning, match=r"miss every hash table.*X has negative values: centred or standardised "
                                         r"features \(e.g. StandardScaler\) cause this.*give the raw \(non-negative\) "
                                         r"CNN features as they are"):
        make_pipeline(StandardScaler(), LLSHDetector(train=False, contamination=0.1)).fit(x)
    assert "StandardScaler" in LLSHDetector.__doc__ and "raw (non-negative) CNN features" in LLSHDetector.__doc__


def test_video_ids_passed_as_y_warn(rng):
    x, labels = _videos(rng, 4, lengths=(10, 12))
    with pytest.warns(UserWarning, match=r"y is ignored.*fit\(X, video_ids=vids\)"):
        det = LLSHDetector(train=False, n_tables=4, n_bits=8).fit(x, labels)
    assert det.calibration_ == "leave-one-out"  # the ids were not used
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*y is ignored")
        LLSHDetector(train=False, n_tables=4, n_bits=8).fit(x, video_ids=labels)


def test_input_errors_are_short_and_ours(rng):
    from llsh_index.errors import InvalidInputError

    x = np.abs(rng.standard_normal((50, 512))).astype(np.float32)
    det = LLSHDetector(train=False, n_tables=4, n_bits=8).fit(x)
    with pytest.raises(InvalidInputError) as info:
        det.predict(x[0])
    assert str(info.value) == ("X: expected a 2-D array (n_samples, n_features), got shape (512,).  Reshape your "
                               "data: X.reshape(1, -1) for a single sample, X.reshape(-1, 1) for a single feature")
    bad = x[:4].copy()
    bad[2, 7] = np.nan
    for method in (det.predict, det.score_samples, det.fit):
        with pytest.raises(InvalidInputError) as info:
            method(bad)
        assert str(info.value) == "X: expected finite values, got NaN or inf in X (row 2)"
    bad[2, 7], bad[3, 0] = 1.0, np.inf
    with pytest.raises(InvalidInputError, match=r"^X: expected finite values, got NaN or inf in X \(row 3\)$"):
        det.decision_function(bad)
