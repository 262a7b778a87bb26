"""LLSHDetector against scikit-learn's estimator checks and the index it wraps."""
import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from llsh_index import LearnableLSHIndex
from llsh_index.sklearn import LLSHDetector

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
    assert (det.predict(other) == -1).mean() >= 0.9 and (det.predict(normal) == 1).mean() >= 0.8


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
