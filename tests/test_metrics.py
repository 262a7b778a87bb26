"""Tests of llsh_index.metrics against independent oracles (hand-computed values, a
rank-sum AUC, an explicit Gaussian convolution) and the real label files."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import rankdata

from llsh_index import metrics as M
from llsh_index.errors import LLSHError

DATA = Path(os.environ.get("LLSH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
GT_DIR = DATA / "vad_groundtruth"
PED2 = DATA / "ped2"

# From shared/data/README.md: videos, frames, anomalous frames.
GT_TABLE = {
    "Avenue": (21, 15_324, 3_867),
    "ST": (107, 40_791, 17_326),
    "Corridor": (150, 181_567, 108_278),
}


def _gt_path(name: str) -> Path:
    p = GT_DIR / f"{name}_gt.npz"
    if not p.exists():
        pytest.skip(f"real label file {p} is absent (shared data not available here)")
    return p


@pytest.fixture(scope="module", params=sorted(GT_TABLE))
def real_labels(request):
    return request.param, M.load_labels(_gt_path(request.param))


# ----------------------------------------------------------------------------- oracles


def auc_oracle(labels, scores) -> float:
    """Mann-Whitney AUC from average ranks (ties count 1/2); independent of sklearn."""
    labels = np.asarray(labels).astype(bool)
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gaussian_oracle(x, sigma, truncate=4.0):
    """Explicit convolution with a normalised Gaussian, mirror ('reflect') boundaries."""
    x = np.asarray(x, dtype=np.float64)
    r = int(truncate * sigma + 0.5)
    t = np.arange(-r, r + 1)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    w /= w.sum()
    xp = np.pad(x, r, mode="symmetric")  # numpy 'symmetric' == scipy.ndimage 'reflect'
    return np.array([np.dot(w, xp[i : i + 2 * r + 1]) for i in range(x.size)])


def reference_place(snippet, n_frames):
    """The reference placement, written out: zeros, snippet j at frame j + (N - n)//2 + 1."""
    out = np.zeros(n_frames)
    off = (n_frames - len(snippet)) // 2 + 1
    for j, v in enumerate(snippet):
        out[j + off] = v
    return out


# ----------------------------------------------------------------------------- hand-checked


def test_six_frame_video_hand_checked():
    # positives 0.35, 0.8; negatives 0.1, 0.4, 0.2, 0.3: 0.35 beats 3 of 4, 0.8 beats 4 -> 7/8
    labels = {"v": np.array([0, 0, 1, 1, 0, 0], dtype=np.uint8)}
    scores = {"v": np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.3])}
    r = M.macro_auc(scores, labels, sigma=0)
    assert r.auc == pytest.approx(0.875, abs=1e-12)
    assert r.per_video == {"v": pytest.approx(0.875)}
    assert (r.kind, r.n_videos, r.n_single_class, r.n_frames) == ("macro", 1, 0, 6)
    # one video: micro (normalisation is monotone) equals macro
    assert M.micro_auc(scores, labels, sigma=0).auc == pytest.approx(0.875, abs=1e-12)
    # sigma=None is also "no smoothing"
    assert M.macro_auc(scores, labels, sigma=None).auc == pytest.approx(0.875, abs=1e-12)


def test_ties_count_half():
    labels = {"v": [0, 1, 0, 1]}
    assert M.macro_auc({"v": [1.0, 1.0, 1.0, 1.0]}, labels, sigma=0).auc == 0.5
    # pos {2, 1}, neg {1, 0}: 2>1, 2>0, 1=1 (1/2), 1>0 -> 3.5/4
    assert M.macro_auc({"v": [1.0, 2.0, 0.0, 1.0]}, labels, sigma=0).auc == pytest.approx(0.875)


def test_macro_is_unweighted_mean_of_videos():
    labels = {"a": [0, 1], "b": [0, 0, 0, 1, 1, 1, 1, 1]}
    scores = {"a": [1.0, 0.0], "b": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]}
    r = M.macro_auc(scores, labels, sigma=0)
    assert r.per_video == {"a": 0.0, "b": 1.0}
    assert r.auc == 0.5


def test_micro_normalises_each_video():
    # after min-max per video both become [0, 1/3, 2/3, 1]; pooled labels
    # A: 0 0 1 1 and B: 0 1 1 1 -> positives {2/3, 1, 1/3, 2/3, 1}, negatives {0, 1/3, 0}
    # wins: 3 + 3 + (2 + 1/2) + 3 + 3 = 14.5 of 15
    labels = {"A": [0, 0, 1, 1], "B": [0, 1, 1, 1]}
    scores = {"A": [0.0, 1.0, 2.0, 3.0], "B": [10.0, 20.0, 30.0, 40.0]}
    r = M.micro_auc(scores, labels, sigma=0)
    assert r.auc == pytest.approx(14.5 / 15, abs=1e-12)
    assert (r.kind, r.n_videos, r.n_frames, r.n_constant) == ("micro", 2, 8, 0)
    # without the per-video normalisation the pooled AUC would be 13/15
    raw = auc_oracle(np.r_[labels["A"], labels["B"]], np.r_[scores["A"], scores["B"]])
    assert raw == pytest.approx(13 / 15)
    assert r.auc != pytest.approx(raw)


def test_micro_constant_video_policy():
    labels = {"A": [0, 1, 0, 1], "B": [1, 1, 0, 0]}
    scores = {"A": [0.0, 1.0, 0.0, 1.0], "B": [0.7, 0.7, 0.7, 0.7]}
    # default (reference): B keeps its constant 0.7 -> its positives beat A's negatives (0)
    # and tie B's negatives; A's positives (1.0) beat every negative.
    # positives {1, 1, .7, .7}, negatives {0, 0, .7, .7}: 4 + 4 + 2*(2 + 2*0.5) = 14 of 16
    r = M.micro_auc(scores, labels, sigma=0)
    assert r.n_constant == 1 and r.constant_videos == ("B",)
    assert M.macro_auc(scores, labels, sigma=0).per_video["B"] == 0.5  # what the constant video's own AUC is
    assert r.auc == pytest.approx(14 / 16)
    # constant_fill=0: B ties with A's negatives: 4 + 4 + 2 * (4 * 0.5) = 12 of 16
    assert M.micro_auc(scores, labels, sigma=0, constant_fill=0.0).auc == pytest.approx(12 / 16)


# ----------------------------------------------------------------------------- smoothing


@pytest.mark.parametrize("sigma", [1, 3.5, 12])
def test_smooth_scores_matches_explicit_gaussian(sigma):
    rng = np.random.default_rng(1)
    x = rng.random(200)
    np.testing.assert_allclose(M.smooth_scores(x, sigma), gaussian_oracle(x, sigma), rtol=0, atol=1e-12)


def test_smooth_scores_zero_sigma_and_no_mutation():
    x = np.array([0.0, 1.0, 0.0])
    out = M.smooth_scores(x, 0)
    np.testing.assert_array_equal(out, x)
    out[0] = 5
    assert x[0] == 0.0


def test_smooth_scores_sigma_extremes():
    """Below 0.125 scipy's kernel has one tap: the scores come back unchanged (scipy itself divides
    by zero for sigma < 1e-154); a kernel of more than 8e6 + 1 taps is refused, not allocated."""
    x = np.random.default_rng(3).random(40)
    for sigma in (1e-300, 1e-160, 0.05, 0.1249):
        np.testing.assert_array_equal(M.smooth_scores(x, sigma), x)
    np.testing.assert_allclose(M.smooth_scores(x, 0.2), gaussian_oracle(x, 0.2), rtol=0, atol=1e-12)
    np.testing.assert_allclose(M.smooth_scores(x, 1e6), gaussian_oracle(x, 1e6), rtol=0, atol=1e-9)
    for sigma in (1e6 * (1 + 1e-9), 1e12):
        with pytest.raises(M.MetricsError, match="sigma: expected at most 1e\\+06"):
            M.smooth_scores(x, sigma)
    labels = {"a": np.r_[np.zeros(20), np.ones(20)]}
    assert M.evaluate({"a": x}, labels, sigma=1e-300).micro.auc == M.evaluate({"a": x}, labels, sigma=0).micro.auc


def test_macro_with_smoothing_matches_oracle():
    rng = np.random.default_rng(2)
    labels, scores = {}, {}
    for i, n in enumerate([60, 137, 300]):
        lab = np.zeros(n, dtype=np.uint8)
        lab[n // 3 : n // 3 + n // 4] = 1
        labels[f"v{i}"] = lab
        scores[f"v{i}"] = rng.random(n) + 0.5 * lab
    r = M.macro_auc(scores, labels)  # sigma=12
    expected = {k: auc_oracle(labels[k], gaussian_oracle(scores[k], 12)) for k in labels}
    for k in labels:
        assert r.per_video[k] == pytest.approx(expected[k], abs=1e-12)
    assert r.auc == pytest.approx(np.mean(list(expected.values())), abs=1e-12)


# ----------------------------------------------------------------------------- alignment


def test_snippet_to_frame_hand_cases():
    s = np.arange(1, 8, dtype=float)  # 7 snippets
    # d = 3: offset 3 // 2 + 1 = 2, trailing pad 1
    np.testing.assert_array_equal(M.snippet_to_frame_scores(s, 10), [0, 0, 1, 2, 3, 4, 5, 6, 7, 0])
    # d = 1: offset 1, no trailing pad
    np.testing.assert_array_equal(M.snippet_to_frame_scores(s, 8), [0, 1, 2, 3, 4, 5, 6, 7])
    # d = 2: offset 2, no trailing pad
    np.testing.assert_array_equal(M.snippet_to_frame_scores([5.0, 6.0, 7.0], 5), [0, 0, 5, 6, 7])
    # d = 4: offset 3, trailing 1 (more padding than scores: warned, see the centre-alignment tests)
    with pytest.warns(M.CentreAlignmentWarning):
        np.testing.assert_array_equal(M.snippet_to_frame_scores([5.0, 6.0], 6), [0, 0, 0, 5, 6, 0])
    # padding options
    np.testing.assert_array_equal(
        M.snippet_to_frame_scores(s, 10, pad_value=-1.0), [-1, -1, 1, 2, 3, 4, 5, 6, 7, -1]
    )
    np.testing.assert_array_equal(M.snippet_to_frame_scores(s, 10, pad="edge"), [1, 1, 1, 2, 3, 4, 5, 6, 7, 7])
    # same length: unchanged
    np.testing.assert_array_equal(M.snippet_to_frame_scores(s, 7), s)
    with pytest.raises(M.LengthMismatchError, match="at most n_frames=6.*got 7"):
        M.snippet_to_frame_scores(s, 6)


@pytest.mark.parametrize("d", [1, 2, 15, 62])
def test_snippet_to_frame_matches_reference_placement(d):
    rng = np.random.default_rng(d)
    n_frames = 120
    s = rng.random(n_frames - d) + 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.CentreAlignmentWarning)  # d = 62 pads more frames than it covers
        np.testing.assert_array_equal(M.snippet_to_frame_scores(s, n_frames), reference_place(s, n_frames))


def test_centre_alignment_and_flip_reproduce_reference_on_real_labels():
    labels = M.load_labels(_gt_path("ST"))
    rng = np.random.default_rng(3)
    d = 15  # e.g. 16-frame snippets at stride 1
    scores = {k: rng.random(v.size - d) + 0.3 * v[d // 2 + 1 : d // 2 + 1 + v.size - d] for k, v in labels.items()}
    macro = M.macro_auc(scores, labels, align="centre", single_class="flip")
    micro = M.micro_auc(scores, labels, align="centre")
    # reference algorithm written out with the rank-sum oracle
    per, cat_l, cat_s = {}, [], []
    for k in sorted(scores):
        sm = gaussian_oracle(scores[k], 12)
        lab = labels[k].copy()
        fs = reference_place(sm, lab.size)
        if np.all(lab == lab[0]):
            lab[0] = 1 - lab[0]
        per[k] = auc_oracle(lab, fs)
        cat_l.append(labels[k])
        cat_s.append(reference_place((sm - sm.min()) / (sm.max() - sm.min()), lab.size))
    assert macro.auc == pytest.approx(np.mean(list(per.values())), abs=1e-9)
    assert macro.n_single_class == 1 and macro.single_class_videos == ("04_0011",)
    assert "04_0011" in macro.per_video and len(macro.per_video) == 107
    assert micro.auc == pytest.approx(auc_oracle(np.concatenate(cat_l), np.concatenate(cat_s)), abs=1e-9)


# ----------------------------------------------------------------------------- single class


def test_single_class_policies():
    labels = {
        "mixed": np.array([0, 0, 1, 1, 0, 0], dtype=np.uint8),
        "all1": np.ones(3, dtype=np.uint8),
        "all0": np.zeros(3, dtype=np.uint8),
    }
    scores = {
        "mixed": np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.3]),
        "all1": np.array([0.2, 0.5, 0.9]),
        "all0": np.array([0.2, 0.5, 0.9]),
    }
    skip = M.macro_auc(scores, labels, sigma=0)
    assert skip.single_class == "skip"
    assert (skip.n_videos, skip.n_single_class) == (3, 2)
    assert skip.single_class_videos == ("all0", "all1")
    assert set(skip.per_video) == {"mixed"}
    assert skip.auc == pytest.approx(0.875)
    assert skip.n_frames == 6

    # flip (reference): all1 -> labels [0,1,1]: 0.5, 0.9 > 0.2 -> 1.0
    #                   all0 -> labels [1,0,0]: 0.2 < 0.5, 0.9 -> 0.0
    flip = M.macro_auc(scores, labels, sigma=0, single_class="flip")
    assert flip.per_video == {"all0": 0.0, "all1": 1.0, "mixed": pytest.approx(0.875)}
    assert flip.auc == pytest.approx((0.875 + 1.0 + 0.0) / 3)
    assert flip.n_single_class == 2
    # the caller's labels are not modified by the flip
    assert labels["all1"].tolist() == [1, 1, 1] and labels["all0"].tolist() == [0, 0, 0]

    with pytest.raises(M.SingleClassError, match="all0.*only label 0 in 3 frames"):
        M.macro_auc(scores, labels, sigma=0, single_class="error")

    micro = M.micro_auc(scores, labels, sigma=0)
    assert (micro.n_videos, micro.n_single_class, micro.single_class) == (3, 2, "include")


def test_only_single_class_videos():
    labels = {"a": [1, 1, 1], "b": [1, 1]}
    scores = {"a": [0.1, 0.2, 0.3], "b": [0.5, 0.5]}
    with pytest.raises(M.EmptyInputError, match="0 of 2.*2 single-class"):
        M.macro_auc(scores, labels, sigma=0)
    with pytest.raises(M.SingleClassError, match="only label 1"):
        M.micro_auc(scores, labels, sigma=0)


# ----------------------------------------------------------------------------- real labels


def test_load_labels_matches_readme(real_labels):
    name, labels = real_labels
    n_videos, n_frames, n_anom = GT_TABLE[name]
    assert len(labels) == n_videos
    assert sum(v.size for v in labels.values()) == n_frames
    assert sum(int(v.sum()) for v in labels.values()) == n_anom
    assert all(v.dtype == np.uint8 and v.ndim == 1 for v in labels.values())
    assert list(labels) == sorted(labels)


def test_real_labels_perfect_inverted_constant(real_labels):
    name, labels = real_labels
    single = sorted(k for k, v in labels.items() if np.unique(v).size == 1)
    assert len(single) == {"Avenue": 0, "ST": 1, "Corridor": 16}[name]

    perfect = {k: v.astype(np.float64) for k, v in labels.items()}
    r = M.evaluate(perfect, labels, sigma=0)
    assert r.macro.auc == 1.0 and r.micro.auc == 1.0
    assert r.macro.n_single_class == r.micro.n_single_class == len(single)
    assert list(r.macro.single_class_videos) == single
    assert len(r.macro.per_video) == len(labels) - len(single)
    assert r.micro.n_frames == GT_TABLE[name][1]
    assert r.micro.n_constant == len(single) and list(r.micro.constant_videos) == single

    inverted = {k: 1.0 - v for k, v in perfect.items()}
    r = M.evaluate(inverted, labels, sigma=0)
    assert r.macro.auc == 0.0 and r.micro.auc == 0.0

    const = {k: np.full(v.size, 0.25) for k, v in labels.items()}
    r = M.evaluate(const, labels)  # sigma=12: still constant
    assert r.macro.auc == 0.5 and r.micro.auc == 0.5
    assert r.micro.n_constant == len(labels) and r.micro.constant_videos == tuple(sorted(labels))


# ----------------------------------------------------------------------------- ped2


def _ped2_paths():
    mat = PED2 / "ped2.mat"
    frames = PED2 / "testing" / "frames"
    if not mat.exists() or not frames.is_dir():
        pytest.skip(f"UCSD Ped2 data ({mat}, {frames}) is absent (shared data not available here)")
    return mat, frames


def test_load_ped2_labels_real():
    mat, frames = _ped2_paths()
    counts = M.ped2_frame_counts(frames)
    assert list(counts) == [f"{i:02d}" for i in range(1, 13)]
    labels = M.load_ped2_labels(mat, counts)
    assert sum(v.size for v in labels.values()) == 2010
    assert sum(int(v.sum()) for v in labels.values()) == 1648
    # video 01: anomalous frames 61..180 (1-based, inclusive) of 180
    v1 = labels["01"]
    assert v1.size == 180 and v1[:60].sum() == 0 and v1[60:].all()
    single = [k for k, v in labels.items() if v.min() == v.max()]
    assert single == ["08", "09", "10", "11"]
    # sequence form gives the same, with generated names
    seq = M.load_ped2_labels(mat, [counts[k] for k in sorted(counts)])
    assert all(np.array_equal(seq[k], labels[k]) for k in labels)
    # a perfect detector on ped2: macro skips the 4 single-class videos
    r = M.evaluate({k: v.astype(float) for k, v in labels.items()}, labels, sigma=0)
    assert (r.macro.auc, r.micro.auc, r.macro.n_single_class) == (1.0, 1.0, 4)


def test_load_ped2_labels_synthetic_and_errors(tmp_path):
    import scipy.io

    gt = np.empty((1, 2), dtype=object)
    gt[0, 0] = np.array([[2], [4]], dtype=np.uint8)
    gt[0, 1] = np.array([[1, 5], [2, 6]], dtype=np.uint8)  # two ranges
    p = tmp_path / "gt.mat"
    scipy.io.savemat(p, {"gt": gt})
    labels = M.load_ped2_labels(p, [5, 6])
    assert labels["01"].tolist() == [0, 1, 1, 1, 0]
    assert labels["02"].tolist() == [1, 1, 0, 0, 1, 1]
    with pytest.raises(M.LengthMismatchError, match="expected frame counts for 2 videos .*, got 3"):
        M.load_ped2_labels(p, [5, 6, 7])
    # some of the videos, named by number: those are labelled
    assert {k: v.tolist() for k, v in M.load_ped2_labels(p, {"02": 6}).items()} == {"02": [1, 1, 0, 0, 1, 1]}
    for bad in ({"x": 6}, {"03": 6}, {"2": 6, "x": 5, "y": 1}):  # not numbers of the file's videos
        with pytest.raises(M.LengthMismatchError, match="named by number"):
            M.load_ped2_labels(p, bad)
    with pytest.raises(M.LengthMismatchError, match=r"\[2, 4\].*3 frames"):
        M.load_ped2_labels(p, [3, 6])
    scipy.io.savemat(tmp_path / "x.mat", {"other": np.zeros(3)})
    with pytest.raises(M.LabelFileError, match="expected a variable 'gt'"):
        M.load_ped2_labels(tmp_path / "x.mat", [1])


# ----------------------------------------------------------------------------- errors


def test_load_labels_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", a=np.array([0, 2, 1]))
    with pytest.raises(M.InvalidLabelError, match=r"\{0, 1\}, got value\(s\) \[2\]"):
        M.load_labels(tmp_path / "bad.npz")
    np.savez(tmp_path / "obj.npz", a=np.array([[0], [0, 1]], dtype=object))
    with pytest.raises(M.LabelFileError):
        M.load_labels(tmp_path / "obj.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(M.LabelFileError, match="expected an .npz archive"):
        M.load_labels(tmp_path / "single.npy")
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_bytes(b"frame,label\n")
    np.savez(tmp_path / "whole.npz", a=np.zeros(100))
    (tmp_path / "truncated.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:300])
    (tmp_path / "folder.npz").mkdir()
    for name in ("empty.npz", "text.npz", "truncated.npz", "folder.npz"):
        with pytest.raises(M.LabelFileError, match=f"{name}: not a readable label npz"):
            M.load_labels(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        M.load_labels(tmp_path / "missing.npz")
    np.savez(tmp_path / "ok.npz", b=np.array([0.0, 1.0]), a=np.array([1, 0], dtype=np.int64))
    ok = M.load_labels(tmp_path / "ok.npz")
    assert list(ok) == ["a", "b"] and ok["b"].dtype == np.uint8 and ok["b"].tolist() == [0, 1]


def test_option_types_and_mixed_video_names():
    """pad_value / constant_fill of the wrong type, and video names of mixed types: typed errors, not
    numpy's ValueError / TypeError from float() or sorted()."""
    labels = {"a": [0, 1, 0, 1], "b": [1, 0, 0, 0]}
    short = {"a": [0.1, 0.9, 0.2], "b": [0.9, 0.1, 0.2]}  # one frame fewer: padded with align="centre"
    for bad in ("x", None, [1.0], True):
        with pytest.raises(M.MetricsTypeError, match="pad_value: expected a number"):
            M.micro_auc(short, labels, sigma=0, align="centre", pad_value=bad)
    with pytest.raises(M.NonFiniteScoreError, match="pad_value"):
        M.macro_auc(short, labels, sigma=0, align="centre", pad_value=float("nan"))
    assert M.micro_auc(short, labels, sigma=0, align="centre", pad_value=np.float32(0.5)).auc == \
        M.micro_auc(short, labels, sigma=0, align="centre", pad_value=0.5).auc
    good = {"a": [0.1, 0.9, 0.2, 0.8], "b": [0.9, 0.1, 0.2, 0.3]}
    for bad in ("x", [0.5]):
        with pytest.raises(M.MetricsTypeError, match="constant_fill: expected a number"):
            M.micro_auc(good, labels, sigma=0, constant_fill=bad)
    with pytest.raises(M.MissingVideoError, match=r"\[1\]"):
        M.micro_auc({**good, 1: [0.1, 0.2, 0.3, 0.4]}, labels, sigma=0)


def test_input_errors():
    labels = {"a": [0, 1, 0, 1], "b": [1, 0, 0, 0]}
    good = {"a": [0.1, 0.9, 0.2, 0.8], "b": [0.9, 0.1, 0.2, 0.3]}
    for f in (M.macro_auc, M.micro_auc):
        with pytest.raises(M.MissingVideoError, match=r"no labels: \['c'\]"):
            f({**good, "c": [0.1, 0.2]}, labels, sigma=0)
        with pytest.raises(M.MissingVideoError, match=r"expected scores for all 2 labelled videos, got 1.*\['b'\]"):
            f({"a": good["a"]}, labels, sigma=0)
        assert f({"a": good["a"]}, labels, sigma=0, allow_subset=True).n_videos == 1
        with pytest.raises(M.LengthMismatchError, match="'a'.*expected 4 scores.*got 3 \\(pass align='centre', "
                                                        "llsh-index evaluate --align centre, to place fewer"):
            f({**good, "a": [0.1, 0.2, 0.3]}, labels, sigma=0)
        with pytest.raises(M.LengthMismatchError, match="'a'.*at most 4.*got 5"):
            f({**good, "a": [0.1] * 5}, labels, sigma=0, align="centre")
        with pytest.raises(M.NonFiniteScoreError, match="'b'.*1 non-finite.*index 2"):
            f({**good, "b": [0.1, 0.2, np.nan, 0.3]}, labels, sigma=0)
        with pytest.raises(M.NonFiniteScoreError):
            f({**good, "b": [0.1, 0.2, np.inf, 0.3]}, labels, sigma=0)
        with pytest.raises(M.EmptyInputError, match="at least 1 video, got 0"):
            f({}, labels, sigma=0)
        with pytest.raises(M.EmptyInputError, match="at least 1 score, got 0"):
            f({**good, "a": []}, labels, sigma=0)
        with pytest.raises(M.InvalidLabelError, match=r"got value\(s\) \[3\]"):
            f(good, {**labels, "a": [0, 3, 0, 1]}, sigma=0)
        with pytest.raises(M.MetricsError, match="1-D"):
            f({**good, "a": [[0.1, 0.2], [0.3, 0.4]]}, labels, sigma=0)
        with pytest.raises(M.MetricsTypeError, match="mapping"):
            f([0.1, 0.2], labels, sigma=0)
        with pytest.raises(M.MetricsTypeError, match="dtype"):
            f({**good, "a": ["x", "y", "z", "w"]}, labels, sigma=0)
        with pytest.raises(M.MetricsError, match="sigma"):
            f(good, labels, sigma=-1)
        with pytest.raises(M.MetricsError, match="align"):
            f(good, labels, align="middle")
    with pytest.raises(M.MetricsError, match=r"single_class: expected one of \['skip', 'flip', 'error'\], got 'drop'"):
        M.macro_auc(good, labels, single_class="drop")
    # the error hierarchy: value errors are ValueError, type errors TypeError
    assert issubclass(M.MetricsError, ValueError) and issubclass(M.MetricsTypeError, TypeError)
    assert issubclass(M.MetricsError, LLSHError) and issubclass(M.MetricsTypeError, LLSHError)
    for cls in (M.MissingVideoError, M.LengthMismatchError, M.NonFiniteScoreError, M.EmptyInputError,
                M.InvalidLabelError, M.SingleClassError, M.LabelFileError):
        assert issubclass(cls, M.MetricsError)


def test_accepts_npz_like_label_mapping(tmp_path):
    np.savez(tmp_path / "gt.npz", a=np.array([0, 1, 1, 0], dtype=np.uint8))
    with np.load(tmp_path / "gt.npz") as z:
        r = M.macro_auc({"a": [0.0, 1.0, 1.0, 0.0]}, z, sigma=0)
    assert r.auc == 1.0


def test_sigma_true_and_scores_near_the_float64_limit():
    """sigma=True ran as sigma 1; finite scores near float64's limit smoothed to inf (and the AUC path
    then called the finite input non-finite).  Smoothing is a weighted mean: the result stays in range."""
    from scipy.ndimage import gaussian_filter1d

    with pytest.raises(M.MetricsTypeError, match="sigma: expected a number >= 0 or None, got True"):
        M.smooth_scores([1.0, 2.0], sigma=True)
    big = np.array([1e308, 1e308, -1e308, 0.0, 5e307])
    got = M.smooth_scores(big, sigma=2)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, gaussian_filter1d(big / 1e308, 2) * 1e308, rtol=1e-12)
    labels = {"a": np.array([1, 1, 0, 0, 0])}
    assert M.macro_auc({"a": big}, labels, sigma=2).auc == M.macro_auc({"a": big / 1e308}, labels, sigma=2).auc


def test_check_frame_labels_is_the_label_check_of_every_reader():
    np.testing.assert_array_equal(M.check_frame_labels([0, 1, 1.0, True]), np.array([0, 1, 1, 1], np.uint8))
    assert M.check_frame_labels(np.array([1, 0])).dtype == np.uint8
    for bad, err, msg in (([0, 2], M.InvalidLabelError, r"clip: expected labels in \{0, 1\}, got value\(s\) \[2\]"),
                          ([0.0, np.nan], M.InvalidLabelError, "clip: expected labels in"),
                          ([[0, 1]], M.InvalidLabelError, r"clip: expected a 1-D label array, got shape \(1, 2\)"),
                          (["0", "1"], M.MetricsTypeError, "clip: expected a numeric 0/1 array"),
                          ([], M.EmptyInputError, "clip: expected at least 1 frame label, got 0")):
        with pytest.raises(err, match=msg):
            M.check_frame_labels(bad, "clip")



def _numbered_mat(tmp_path):
    """12 videos; oracle: video k (1-based) is anomalous at frames k .. k + 1 (1-based)."""
    import scipy.io

    gt = np.empty((1, 12), dtype=object)
    for i in range(12):
        gt[0, i] = np.array([[i + 1], [i + 2]], dtype=np.uint8)
    p = tmp_path / "gt.mat"
    scipy.io.savemat(p, {"gt": gt})

    def want(k, n=20):
        lab = np.zeros(n, np.uint8)
        lab[k - 1:k + 1] = 1
        return lab.tolist()
    return p, want


def test_load_ped2_labels_names_by_number(tmp_path):
    """Names that are video numbers label that video, however padded, for some videos or all of them
    (all 12 named 1 .. 12 sort as strings, '10' before '2', and were labelled by that order)."""
    p, want = _numbered_mat(tmp_path)
    for names in ([str(k) for k in range(1, 13)], [f"{k:02d}" for k in range(1, 13)], [f"{k:03d}" for k in range(1, 13)],
                  ["1", "3", "10"], ["012", "2"]):
        got = M.load_ped2_labels(p, {n: 20 for n in names})
        assert {n: v.tolist() for n, v in got.items()} == {n: want(int(n)) for n in names}, names
    # the sequence form: names 01 .. 12 in order
    assert {n: v.tolist() for n, v in M.load_ped2_labels(p, [20] * 12).items()} == \
        {f"{k:02d}": want(k) for k in range(1, 13)}
    # a full mapping of other names: sorted names in video order, as before
    names = [f"Test{k:03d}" for k in range(1, 13)]
    assert {n: v.tolist() for n, v in M.load_ped2_labels(p, {n: 20 for n in names}).items()} == \
        {n: want(int(n[4:])) for n in names}


def test_load_ped2_labels_numbers_are_ascii_digits(tmp_path):
    """str.isdigit() takes superscript 2 (int() then raised a bare ValueError) and Devanagari 1 (read as
    video 1): names that are not ASCII numbers of the file's videos are a typed error."""
    p, _ = _numbered_mat(tmp_path)
    for bad in ({"\u00b2": 20}, {"\u0967": 20}, {"00": 20}, {"013": 20}, {"1 ": 20}):
        with pytest.raises(M.LengthMismatchError, match="named by number"):
            M.load_ped2_labels(p, bad)


def roc_oracle(labels, scores):
    """ROC points written out: one threshold per distinct score, from the highest down; (fpr, tpr)
    at 'flag every frame scoring >= threshold', starting at (0, 0)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    pts = [(0.0, 0.0)]
    for t in np.unique(scores)[::-1]:
        flagged = scores >= t
        pts.append(((flagged & ~labels).sum() / (~labels).sum(), (flagged & labels).sum() / labels.sum()))
    return np.array(pts)


def test_micro_roc_curve_is_the_curve_of_micro_auc():
    """Hand case of test_micro_normalises_each_video: the pooled, per-video normalised frames
    give the oracle's ROC points, and the area under them is micro-AUC (14.5 / 15)."""
    labels = {"A": [0, 0, 1, 1], "B": [0, 1, 1, 1]}
    scores = {"A": [0.0, 1.0, 2.0, 3.0], "B": [10.0, 20.0, 30.0, 40.0]}
    def area(x, y):
        return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))

    fpr, tpr, _ = M.micro_roc_curve(scores, labels, sigma=0)
    pooled = np.r_[[0, 1 / 3, 2 / 3, 1], [0, 1 / 3, 2 / 3, 1]]
    want = roc_oracle(np.r_[labels["A"], labels["B"]], pooled)
    # sklearn may drop collinear points: each of its points is one of the oracle's, with the same area
    assert all(np.isclose(want, p).all(axis=1).any() for p in np.c_[fpr, tpr])
    assert area(fpr, tpr) == pytest.approx(14.5 / 15, abs=1e-12)
    assert area(want[:, 0], want[:, 1]) == pytest.approx(14.5 / 15, abs=1e-12)
    rng = np.random.default_rng(5)
    lab = {f"v{i}": (rng.random(80) < 0.3).astype(np.uint8) for i in range(4)}
    sc = {v: rng.standard_normal(80) + 2 * lab[v] for v in lab}
    fpr, tpr, _ = M.micro_roc_curve(sc, lab, sigma=3)
    assert area(fpr, tpr) == pytest.approx(M.micro_auc(sc, lab, sigma=3).auc, abs=1e-12)
    with pytest.raises(M.SingleClassError, match="micro ROC: expected both classes"):
        M.micro_roc_curve({"A": [1.0, 2.0]}, {"A": [0, 0]}, sigma=0)


def test_sigma_beyond_float64_is_a_metrics_error():
    """A Python int beyond float64 raised an untyped OverflowError (float(sigma) caught only TypeError
    and ValueError); it is out of range like sigma=1e12."""
    for sigma, sign in ((10 ** 400, "an"), (-(10 ** 400), "a negative")):
        with pytest.raises(M.MetricsError, match=rf"sigma: expected a number from 0 to 1e\+06 .*got {sign} integer "
                                                 r"of 401 digits"):
            M.smooth_scores([1.0, 2.0, 3.0], sigma)
    np.testing.assert_array_equal(M.smooth_scores([1.0, 2.0, 3.0], 10 ** 6), M.smooth_scores([1.0, 2.0, 3.0], 1e6))


# ----------------------------------------------------------------------------- audit fixes
# Oracles: scipy's gaussian_filter1d and sklearn's roc_auc_score, called here on the protocol written out.


def _sk_smooth(x, sigma=12):
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(np.asarray(x, np.float64), sigma)


def _sk_auc(labels, scores):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(labels), np.asarray(scores, np.float64)))


def _sk_micro(scores, labels, place=None):
    """Micro-AUC written out: smooth, min-max normalise each video, place (default: as is), pool."""
    cat_s, cat_l = [], []
    for v in sorted(scores):
        sm = _sk_smooth(scores[v])
        sm = (sm - sm.min()) / (sm.max() - sm.min()) if sm.max() > sm.min() else sm
        cat_s.append(place(sm, len(labels[v])) if place else sm)
        cat_l.append(np.asarray(labels[v]))
    return _sk_auc(np.concatenate(cat_l), np.concatenate(cat_s))


def test_flip_skips_a_video_of_one_frame_instead_of_nan():
    """single_class='flip' on a one-frame video: the flip leaves one class (roc_auc_score warned and
    returned NaN, which became the macro-AUC); the video is skipped as 'skip' skips, and reported so."""
    scores = {"a": np.array([0.3]), "b": np.array([0.1, 0.9, 0.2]), "c": np.array([0.5, 0.2, 0.9, 0.4])}
    labels = {"a": np.array([1]), "b": np.array([0, 1, 0]), "c": np.ones(4, np.uint8)}
    flipped_c = np.r_[0, 1, 1, 1]  # the reference's flip of frame 0
    want = np.mean([_sk_auc(labels["b"], _sk_smooth(scores["b"])), _sk_auc(flipped_c, _sk_smooth(scores["c"]))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's UndefinedMetricWarning included
        r = M.macro_auc(scores, labels, single_class="flip")
        e = M.evaluate(scores, labels, single_class="flip")
    for res in (r, e.macro):
        assert res.auc == pytest.approx(want, abs=1e-12) and not np.isnan(res.auc)
        assert set(res.per_video) == {"b", "c"} and res.single_class_videos == ("a", "c")
        assert res.n_single_class == 2 and res.n_frames == 7
    # only one-frame single-class videos: no AUC, as under skip
    with pytest.raises(M.EmptyInputError, match="0 of 1 .*of one frame: no class to flip against"):
        M.macro_auc({"a": [0.3]}, {"a": [1]}, single_class="flip")


def test_evaluate_reports_an_undefined_macro_and_still_returns_micro():
    """Two single-class videos (allow_subset): macro-AUC has no video to average; evaluate says so
    (auc None, the reason) and returns micro-AUC, which macro's EmptyInputError used to lose."""
    rng = np.random.default_rng(11)
    labels = {"normal": np.zeros(40, np.uint8), "anomalous": np.ones(30, np.uint8),
              "mixed": (np.arange(50) >= 20).astype(np.uint8)}
    scores = {"normal": rng.random(40), "anomalous": rng.random(30) + 0.2}
    r = M.evaluate(scores, labels, allow_subset=True)
    assert r.macro.auc is None and r.macro.per_video == {}
    assert r.macro.undefined.startswith("no video has both normal and anomalous frames")
    assert (r.macro.n_videos, r.macro.n_single_class) == (2, 2)
    assert r.micro.auc == pytest.approx(_sk_micro(scores, labels), abs=1e-12)
    assert r.micro.auc == M.micro_auc(scores, labels, allow_subset=True).auc
    with pytest.raises(M.EmptyInputError, match="0 of 2"):  # macro_auc alone still refuses
        M.macro_auc(scores, labels, allow_subset=True)
    d = M.evaluate({"mixed": rng.random(50)}, labels, allow_subset=True)  # a defined macro has no reason
    assert d.macro.undefined == "" and d.macro.auc is not None


def _i3d_like(labels, k, rng):
    """One score per k frames (the mean label of the chunk plus noise): what a 16-frame I3D gives."""
    return {v: np.array([lab[i:i + k].mean() for i in range(0, lab.size, k)]) + 0.3 * rng.random(-(-lab.size // k))
            for v, lab in labels.items()}


def test_centre_alignment_refuses_one_score_per_k_frames_on_real_labels():
    """Avenue's labels with one score per 16 frames: centre placement pads 94% of the frames with 0
    and gave a chance-level AUC silently; it is refused, saying how to expand the scores, and the
    expansion the message names gives the oracle's AUC."""
    labels = M.load_labels(_gt_path("Avenue"))
    rng = np.random.default_rng(12)
    scores = _i3d_like(labels, 16, rng)
    for f in (M.evaluate, M.macro_auc, M.micro_auc, M.micro_roc_curve):
        with pytest.raises(M.LengthMismatchError, match=r"align='centre'.*padded.*--snippet-frames K"):
            f(scores, labels, align="centre")
    expanded = {v: np.repeat(s, 16)[:labels[v].size] for v, s in scores.items()}
    r = M.evaluate(expanded, labels)
    assert r.micro.auc == pytest.approx(_sk_micro(expanded, labels), abs=1e-12) and r.micro.auc > 0.8
    per = [_sk_auc(labels[v], _sk_smooth(expanded[v])) for v in sorted(labels) if 0 < labels[v].sum() < labels[v].size]
    assert r.macro.auc == pytest.approx(np.mean(per), abs=1e-12)
    # one video on its own: the placement warns (it cannot tell a short video with a long span)
    with pytest.warns(M.CentreAlignmentWarning, match="more than they cover.*--snippet-frames K"):
        M.snippet_to_frame_scores(scores["01"], labels["01"].size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.snippet_to_frame_scores(np.ones(labels["01"].size - 15), labels["01"].size)


@pytest.mark.parametrize("name", sorted(GT_TABLE))
def test_centre_alignment_keeps_long_snippet_spans_on_real_labels(name):
    """The rule pools the videos: a span of 31 or 63 frames leaves Avenue's 36-frame video (and
    Corridor's 94-frame one) mostly padding, yet is a legitimate reference layout, accepted with the
    reference placement's AUC (oracle: placement written out, scipy smoothing, sklearn AUC)."""
    labels = M.load_labels(_gt_path(name))
    rng = np.random.default_rng(13)
    for span in (15, 31, 63):
        scores = {v: rng.random(max(lab.size - span, 1)) + 0.5 * lab[: max(lab.size - span, 1)]
                  for v, lab in labels.items()}
        r = M.micro_auc(scores, labels, align="centre")
        assert r.auc == pytest.approx(_sk_micro(scores, labels, reference_place), abs=1e-9), (name, span)


def test_check_centre_alignment_boundary():
    """More padded frames than covered ones over all videos is refused; equal is accepted."""
    M.check_centre_alignment({"a": 50, "b": 10}, {"a": 100, "b": 20})       # 60 padded, 60 covered
    with pytest.raises(M.LengthMismatchError, match=r"60 covered and 61 padded frames of 121 in 2 video"):
        M.check_centre_alignment({"a": 50, "b": 10}, {"a": 101, "b": 20})
    M.check_centre_alignment({"short": 1, "long": 900}, {"short": 36, "long": 931})  # one short video: accepted


def test_load_ped2_labels_matches_names_by_their_trailing_number(tmp_path):
    """Mapping names are matched by the number they end in ('video_10' is video 10; string order put it
    second); names without such a number, or a number twice, are refused saying how names are matched;
    allow_subset=False names the videos left out."""
    p, want = _numbered_mat(tmp_path)
    for names in ([f"video_{k}" for k in range(1, 13)], [f"Test{k}" for k in range(1, 13)], ["cam_2", "cam_10"]):
        got = M.load_ped2_labels(p, {n: 20 for n in names})
        number = {n: int("".join(c for c in n if c.isdigit())) for n in names}  # one digit run per name here
        assert {n: v.tolist() for n, v in got.items()} == {n: want(number[n]) for n in names}, names
    for bad, why in (({c: 20 for c in "abcdefghijkl"}, r"12 names, 12 not ending in such a number \(\['a', 'b'"),
                     ({"a_1": 20, "b_1": 20}, "a number used twice"), ({"video_13": 20}, "not ending in such")):
        with pytest.raises(M.LengthMismatchError, match=rf"named by number: names are matched .*by the number they "
                                                        rf"end in.*{why}"):
            M.load_ped2_labels(p, bad)
    with pytest.raises(M.MissingVideoError, match=r"all 12 labelled videos, got 2; missing scores for video\(s\) "
                                                  r"01, 03, 04, 05, 06, 07, 08, 09 \.\.\."):
        M.load_ped2_labels(p, {"video_2": 20, "video_10": 20}, allow_subset=False)
    assert len(M.load_ped2_labels(p, {f"video_{k}": 20 for k in range(1, 13)}, allow_subset=False)) == 12


def test_sigma_beyond_str_limit_is_a_metrics_error():
    """sigma=10**5000: the message counted digits with len(str(int)), which raises ValueError ("Exceeds
    the limit (4300 digits)") past Python's int-to-str limit: an untyped error in place of the typed one."""
    for sigma, sign in ((10 ** 5000, "an"), (-(10 ** 5000), "a negative")):
        with pytest.raises(M.MetricsError, match=rf"sigma: expected a number from 0 to 1e\+06 .*got {sign} integer "
                                                 r"of 5001 digits$"):
            M.smooth_scores([1.0, 2.0, 3.0], sigma)
