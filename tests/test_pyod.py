"""LLSHPyODDetector: PyOD's conventions over the index, against NumPy oracles and inside PyOD's ensembles."""
import warnings

import numpy as np
import pytest

pytest.importorskip("pyod", reason="PyOD is not installed (pip install 'llsh_index[pyod]')")
from pyod.models.base import BaseDetector  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

import oracle  # noqa: E402
from llsh_index import ConfigError, InvalidInputError, LearnableLSHIndex, NotFittedError  # noqa: E402
from llsh_index.pyod_detector import LLSHPyODDetector  # noqa: E402
from llsh_index.sklearn import LLSHDetector  # noqa: E402

# small fits leave held-out rows that miss every table: the calibration warning is asserted where it
# is the subject, elsewhere it is noise
pytestmark = pytest.mark.filterwarnings("ignore:LLSHDetector.fit. .* miss every hash table:UserWarning")


def _two_populations(rng, d=32, n=400):
    a, b = rng.standard_normal((2, d)) * 2
    train = (a + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    normal = (a + 0.5 * rng.standard_normal((100, d))).astype(np.float32)
    other = (b + 0.5 * rng.standard_normal((100, d))).astype(np.float32)
    return train, np.concatenate([normal, other]), np.r_[np.zeros(100), np.ones(100)]


@pytest.mark.parametrize("mode", ["mean", "light"])
def test_scores_are_the_paper_score_and_the_threshold_its_quantile(rng, mode):
    centres = rng.standard_normal((3, 12)) * 2
    x = (centres[rng.integers(0, 3, 80)] + 0.7 * rng.standard_normal((80, 12))).astype(np.float32)
    det = LLSHPyODDetector(train=False, n_tables=3, n_bits=10, mode=mode, contamination=0.15).fit(x)
    assert isinstance(det, BaseDetector)
    # decision_function: the paper's score, higher = more abnormal (NumPy oracle over the layers' codes)
    queries = (centres[rng.integers(0, 3, 30)] + 0.7 * rng.standard_normal((30, 12))).astype(np.float32)
    tables = oracle.build(det.index_.encode(x))
    want = oracle.scores(tables, det.index_.encode(queries), mode, det.index_.default_miss_value())
    np.testing.assert_allclose(det.decision_function(queries), want, rtol=1e-5, atol=1e-6)
    # decision_scores_: each training row scored by the oracle's tables without it (leave-one-out)
    codes = det.index_.encode(x)
    loo = np.array([oracle.scores(oracle.build(np.delete(codes, i, axis=0)), codes[i:i + 1], mode,
                                  det.index_.default_miss_value())[0] for i in range(len(x))])
    np.testing.assert_allclose(det.decision_scores_, loo, rtol=1e-5, atol=1e-6)
    assert det.calibration_ == "leave-one-out"
    assert det.threshold_ == pytest.approx(np.percentile(loo, 85.0), rel=1e-6)
    np.testing.assert_array_equal(det.labels_, (det.decision_scores_ > det.threshold_).astype(int))
    np.testing.assert_array_equal(det.predict(queries), (want > det.threshold_).astype(int))
    labels, confidence = det.predict(queries, return_confidence=True)
    np.testing.assert_array_equal(labels, det.predict(queries))
    assert confidence.shape == (30,) and ((confidence >= 0) & (confidence <= 1)).all()
    # PyOD's linear probability: the score min-max scaled by the training scores, clipped to [0, 1]
    lo, hi = det.decision_scores_.min(), det.decision_scores_.max()
    p = np.clip((det.decision_function(queries) - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(det.predict_proba(queries), np.c_[1 - p, p], rtol=1e-6, atol=1e-9)


def test_the_same_detector_as_llshdetector_with_the_sign_pyod_expects(rng):
    train, test, y = _two_populations(rng)
    params = dict(train=False, n_tables=8, n_bits=16, contamination=0.05)
    det = LLSHPyODDetector(**params).fit(train)
    sk = LLSHDetector(**params).fit(train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the other population misses every table
        np.testing.assert_array_equal(det.decision_function(test), -sk.score_samples(test))
        np.testing.assert_array_equal(det.predict(test), (sk.predict(test) == -1).astype(int))
        assert roc_auc_score(y, det.decision_function(test)) > 0.95
    np.testing.assert_array_equal(det.decision_scores_, sk.held_out_scores_)
    assert det.labels_.mean() == pytest.approx(0.05, abs=0.01)  # contamination of the held-out scores


def test_video_ids_calibrate_on_held_out_videos(rng):
    """With video ids, decision_scores_ are the leave-videos-out scores (oracle: an index of the other
    folds' rows on the same layers scores each fold)."""
    x = rng.standard_normal((90, 12)).astype(np.float32)
    vids = np.repeat(np.arange(6), 15)
    det = LLSHPyODDetector(train=False, n_tables=4, n_bits=8).fit(x, video_ids=vids)
    assert det.calibration_ == "leave-videos-out"
    want = np.empty(len(x))
    for f in range(6):
        held = vids == f
        want[held] = det.index_.empty_like().add(x[~held]).score(x[held])
    np.testing.assert_allclose(det.decision_scores_, want, rtol=1e-6)


def test_pyod_ensembles_take_it_where_llshdetector_fails(rng):
    from pyod.models.combination import average
    from pyod.models.feature_bagging import FeatureBagging
    from pyod.models.lscp import LSCP
    from pyod.utils.utility import standardizer

    train, test, y = _two_populations(rng)
    base = LLSHPyODDetector(train=False, n_tables=4, n_bits=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        bagging = FeatureBagging(base_estimator=base, n_estimators=3, random_state=0).fit(train)
        assert roc_auc_score(y, bagging.decision_function(test)) > 0.95
        # each member is one of ours, fitted on its feature subset: its scores are the oracle's there
        member, features = bagging.estimators_[0], bagging.estimators_features_[0]
        tables = oracle.build(member.index_.encode(train[:, features]))
        want = oracle.scores(tables, member.index_.encode(test[:, features]), "mean",
                             member.index_.default_miss_value())
        np.testing.assert_allclose(member.decision_function(test[:, features]), want, rtol=1e-5, atol=1e-6)
        lscp = LSCP([LLSHPyODDetector(train=False, n_tables=4, n_bits=8, seed=s) for s in range(3)],
                    random_state=0).fit(train)
        assert roc_auc_score(y, lscp.decision_function(test)) > 0.95
        fitted = [LLSHPyODDetector(train=False, n_tables=4, n_bits=8, seed=s).fit(train) for s in range(2)]
        scores = standardizer(np.c_[[f.decision_function(test) for f in fitted]].T)
        assert roc_auc_score(y, average(scores)) > 0.95
        # the scikit-learn detector has neither PyOD's attributes nor its sign
        with pytest.raises(AttributeError, match="decision_scores_"):
            FeatureBagging(base_estimator=LLSHDetector(train=False, n_tables=4, n_bits=8), n_estimators=2,
                           random_state=0).fit(train)


def test_params_clone_and_refit(rng):
    det = LLSHPyODDetector(n_tables=4, n_bits=8, contamination=0.2, train=False, seed=3)
    params = det.get_params()
    assert params["contamination"] == 0.2 and params["seed"] == 3 and set(params) == set(LLSHDetector().get_params())
    x = rng.standard_normal((60, 6)).astype(np.float32)
    a = clone(det).fit(x)
    b = clone(det).fit(x)
    np.testing.assert_array_equal(a.decision_scores_, b.decision_scores_)
    a.set_params(n_bits=6).fit(x)
    assert a.index_.n_bits == 6 and a.decision_scores_.shape == (60,)
    with pytest.raises(ConfigError, match="Invalid parameter foo"):
        a.set_params(foo=1)


def test_held_out_rows_that_miss_put_the_threshold_just_below_the_miss_value(two_demo_videos):
    """The quantile falls on rows that miss every table: a row that misses must still be an outlier
    (PyOD's labels are score > threshold_, so a threshold at the miss value would call it an inlier)."""
    x, vid = two_demo_videos
    with pytest.warns(UserWarning, match=r"of the held-out training rows miss every hash table"):
        det = LLSHPyODDetector(train=False, contamination=0.1).fit(x, video_ids=vid)
    miss = float(np.float32(det.index_.default_miss_value()))
    assert np.percentile(det.decision_scores_, 90.0) >= miss  # the case occurs
    assert det.threshold_ == np.nextafter(miss, 0.0)
    np.testing.assert_array_equal(det.labels_, (det.decision_scores_ >= miss).astype(int))
    noise = np.random.default_rng(0).normal(0, 50, (40, x.shape[1])).astype(np.float32)
    with pytest.warns(UserWarning, match="missed every hash table"):
        assert (det.predict(noise) == 1).all()


@pytest.mark.parametrize("method", ["decision_function", "predict", "predict_proba", "predict_confidence",
                                    "predict_with_rejection"])
def test_use_before_fit_is_the_package_not_fitted_error(rng, method):
    import sklearn.exceptions

    with pytest.raises(NotFittedError, match="LLSHPyODDetector.*not fitted") as info:
        getattr(LLSHPyODDetector(), method)(rng.standard_normal((3, 4)))
    assert isinstance(info.value, sklearn.exceptions.NotFittedError)


@pytest.mark.parametrize("bad", [0.0, 0.7, -1, float("nan"), True, "auto", None, np.float32(0.1)])
def test_contamination_is_checked(rng, bad):
    with pytest.raises(ConfigError, match="contamination"):
        LLSHPyODDetector(contamination=bad, train=False).fit(rng.standard_normal((20, 4)))


def test_np_float64_contamination_is_a_float(rng):
    det = LLSHPyODDetector(contamination=np.float64(0.1), train=False, n_tables=2, n_bits=6)
    x = rng.standard_normal((50, 4))
    det.fit(x)
    assert det.predict_confidence(x[:5]).shape == (5,)


def test_bad_input_is_typed_and_a_failed_refit_keeps_the_fitted_state(rng):
    x = rng.standard_normal((50, 6)).astype(np.float32)
    det = LLSHPyODDetector(train=False, n_tables=2, n_bits=6).fit(x)
    scores, threshold = det.decision_scores_.copy(), det.threshold_
    with pytest.raises(InvalidInputError, match="features"):
        det.decision_function(rng.standard_normal((3, 5)))
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InvalidInputError):
        det.fit(bad)
    with pytest.raises(InvalidInputError):
        det.decision_function(bad)
    np.testing.assert_array_equal(det.decision_scores_, scores)
    assert det.threshold_ == threshold
    for y in (np.zeros(50), np.r_[np.zeros(25), np.ones(25)], np.arange(50) % 3, np.linspace(0, 1, 50)):
        with pytest.warns(UserWarning, match="y is ignored"):  # unsupervised: y sizes nothing
            det.fit(x, y=y)
        assert det.predict_proba(x[:4]).shape == (4, 2)


def test_the_top_level_name(rng):
    import llsh_index

    assert llsh_index.LLSHPyODDetector is LLSHPyODDetector
    assert isinstance(LearnableLSHIndex, type)


def test_adbench_pyod_benchmark_on_one_category():
    """benchmarks/adbench_pyod.py's per-category run: every detector scored, and its LSH row is the
    plain index's AUC on the same split."""
    import sys
    from pathlib import Path

    from conftest import shared_path

    path = shared_path("adbench_resnet18", "MVTec-AD_toothbrush.npz")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import adbench_pyod
        from adbench_static import split
    finally:
        sys.path.pop(0)
    out = adbench_pyod.run_category(str(path), seed=1)
    assert set(out) >= {"LSH", "LLSH", "LLSH bagged", "KNN", "LOF", "IForest", "ECOD"}
    d = np.load(path)
    train, test, labels = split(d["X"].astype(np.float32), d["y"].astype(int), 1)
    index = LearnableLSHIndex(train.shape[1], seed=1).add(train)
    assert out["LSH"]["auc"] == pytest.approx(roc_auc_score(labels, index.score(test)), abs=1e-12)
    assert all(0.5 < out[k]["auc"] <= 1.0 for k in ("LLSH", "KNN"))


def test_predict_proba_inputs_and_methods(rng):
    x = rng.standard_normal((60, 6)).astype(np.float32)
    det = LLSHPyODDetector(train=False, n_tables=2, n_bits=6).fit(x)
    np.testing.assert_array_equal(det.predict_proba(x[:5].tolist()), det.predict_proba(x[:5]))
    with pytest.raises(ConfigError, match="'linear' or 'unify'"):
        det.predict_proba(x[:5], method="foo")
    # unify: PyOD's erf of the score standardised by the training scores' mean and spread
    from scipy.special import erf

    z = (det.decision_function(x[:5]) - det.decision_scores_.mean()) / (det.decision_scores_.std() * np.sqrt(2))
    np.testing.assert_allclose(det.predict_proba(x[:5], method="unify")[:, 1], erf(z).clip(0, 1), rtol=1e-12)


def test_constant_training_scores_give_unify_probabilities_not_nan():
    flat = LLSHPyODDetector(train=False, n_tables=2, n_bits=6).fit(np.ones((30, 8), np.float32))
    assert flat._sigma == 0.0
    rows = np.vstack([np.ones((2, 8)), np.random.default_rng(0).normal(0, 5, (2, 8))]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the far rows miss every table
        p = flat.predict_proba(rows, method="unify")
        s = flat.decision_function(rows)
    assert np.isfinite(p).all()
    np.testing.assert_array_equal(p[:, 1], (s > flat._mu).astype(float))
    np.testing.assert_array_equal(p.sum(axis=1), 1.0)


def test_rejection_statistics_need_one_expected_outlier(rng):
    x = rng.standard_normal((9, 6)).astype(np.float32)
    det = LLSHPyODDetector(train=False, n_tables=2, n_bits=6, contamination=0.1).fit(x)
    with pytest.raises(InvalidInputError, match="at least 1 / contamination = 10 training rows, got 9"):
        det.predict_with_rejection(x, return_stats=True, c_r=0.1)
    assert det.predict_with_rejection(x, c_r=0.1).shape == (9,)  # without the statistics it works
    more = LLSHPyODDetector(train=False, n_tables=2, n_bits=6, contamination=0.1).fit(
        rng.standard_normal((10, 6)).astype(np.float32))
    labels, stats = more.predict_with_rejection(x, return_stats=True, c_r=0.1)  # c_r: PyOD warns without
    assert labels.shape == (9,) and len(stats) == 3 and all(np.isfinite(stats))
    with pytest.raises(NotFittedError, match="not fitted"):
        LLSHPyODDetector().compute_rejection_stats()


def test_a_miss_value_that_distances_reach_is_not_taken_for_misses(rng):
    """miss_value 0.2 (allowed, below the in-bucket distances here): scores at it are not misses, so no
    warning about misses and threshold_ is the plain quantile (the threshold moved below 0.2 flagged
    95% of the training rows before)."""
    x = rng.standard_normal((300, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        det = LLSHPyODDetector(train=False, n_tables=4, n_bits=8, miss_value=0.2).fit(x)
        sk = LLSHDetector(train=False, n_tables=4, n_bits=8, miss_value=0.2).fit(x)
    assert det.threshold_ == pytest.approx(np.percentile(det.decision_scores_, 90.0))
    assert sk.offset_ == pytest.approx(np.percentile(-sk.held_out_scores_, 10.0))
    assert det.labels_.mean() <= 0.1


def test_without_pyod_the_import_error_says_how_to_install(monkeypatch):
    import importlib
    import sys

    for name in ("pyod", "pyod.models", "pyod.models.base"):
        monkeypatch.setitem(sys.modules, name, None)  # as if PyOD were not installed
    monkeypatch.delitem(sys.modules, "llsh_index.pyod_detector", raising=False)
    with pytest.raises(ImportError, match=r"pip install pyod, or pip install 'llsh_index\[pyod\]'"):
        importlib.import_module("llsh_index.pyod_detector")
    import llsh_index

    with pytest.raises(ImportError, match="needs PyOD"):
        llsh_index.LLSHPyODDetector


def test_device_is_passed_to_the_detector_it_wraps(rng, monkeypatch):
    import torch

    import fake_device
    import llsh_index

    x = rng.standard_normal((60, 8)).astype(np.float32)
    assert LLSHPyODDetector().get_params()["device"] == "cpu"
    with pytest.raises(ConfigError, match="device: expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        LLSHPyODDetector(device="gpu").fit(x)
    if not llsh_index.cuda_available():
        with pytest.raises(llsh_index.CudaUnavailableError):
            LLSHPyODDetector(device="cuda:0").fit(x)
    ref = LLSHPyODDetector(train=False, n_tables=3, n_bits=8, contamination=0.2).fit(x)
    fake_device.install(monkeypatch)  # the device (tensor) path on the CPU: the same values
    dev = LLSHPyODDetector(train=False, n_tables=3, n_bits=8, contamination=0.2).fit(x)
    assert isinstance(dev.index_._tables["keys"], torch.Tensor)
    np.testing.assert_array_equal(dev.decision_scores_, ref.decision_scores_)
    assert dev.threshold_ == ref.threshold_
    np.testing.assert_array_equal(dev.decision_function(x[:9] + 0.1), ref.decision_function(x[:9] + 0.1))
    np.testing.assert_array_equal(dev.predict_proba(x[:9] + 0.1), ref.predict_proba(x[:9] + 0.1))
