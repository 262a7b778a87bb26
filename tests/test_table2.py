"""Smoke test of benchmarks/table2.py and tests of llsh_index/synthetic.py (fast: well under 60 s)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import torch
import pytest

from conftest import shared_path
from llsh_index import synthetic as S

pytest.importorskip("faiss", reason="faiss is not installed (the KNN and K-means rows need it)")
pytest.importorskip("matplotlib", reason="matplotlib is not installed (the benchmark draws a PNG)")

ROOT = Path(__file__).resolve().parents[1]


def _load_table2():
    spec = importlib.util.spec_from_file_location("table2", ROOT / "benchmarks" / "table2.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


T2 = _load_table2()


def toy_labels():
    """Six test videos of two 'scenes': anomalies in the middle, at the start, two runs, none, all."""
    lab = {}
    for i, (n, runs) in enumerate([(160, [(60, 100)]), (140, [(0, 30)]), (200, [(20, 50), (120, 170)]),
                                   (120, []), (150, [(70, 149)]), (110, [(0, 110)])]):
        a = np.zeros(n, np.uint8)
        for s, e in runs:
            a[s:e] = 1
        lab[f"{1 + i % 2:02d}_{i:04d}"] = a
    return lab


def tiny_config(**kw):
    base = dict(scale=1500 / S.ST_TRAIN_SNIPPETS, dim=32, n_train_videos=12, snippet_span=5, latent_shared=4,
                latent_scene=2, seed=3)
    base.update(kw)
    return S.SyntheticConfig(**base)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_labels_and_memmaps(tmp_path):
    labels = toy_labels()
    cfg = tiny_config()
    b = S.generate(str(tmp_path / "b"), labels, cfg)
    assert isinstance(b.train, np.memmap) and isinstance(b.test, np.memmap)
    assert b.train.dtype == np.float32 and b.train.shape == (cfg.n_train, 32)
    expected_m = sum(v.size - cfg.snippet_span for v in labels.values())
    assert b.test.shape == (expected_m, 32)
    assert np.isfinite(np.asarray(b.train)).all() and np.isfinite(np.asarray(b.test)).all()
    # training videos: ids contiguous, 12 videos, each >= 2 snippets, in manifest order
    counts = np.bincount(b.train_video_ids)
    assert counts.size == 12 and counts.min() >= 2
    assert [v["count"] for v in b.manifest["train_videos"]] == counts.tolist()
    # test snippets: the label of the frame where metrics' centred placement puts the score
    snip = np.load(tmp_path / "b" / "test_snippet_labels.npy")
    for v in b.test_videos:
        lab = labels[v["name"]]
        assert v["n_frames"] == lab.size and v["count"] == lab.size - cfg.snippet_span
        off = cfg.snippet_span // 2 + 1
        np.testing.assert_array_equal(snip[v["start"]:v["start"] + v["count"]], lab[off:off + v["count"]])
        np.testing.assert_array_equal(b.labels[v["name"]], lab)
    # split_scores inverts the concatenation
    parts = b.split_scores(np.arange(b.n_test, dtype=np.float32))
    assert [p[0] for p in parts.values()] == [v["start"] for v in b.test_videos]


def test_snippet_labels_match_metrics_placement():
    from llsh_index.metrics import snippet_to_frame_scores

    frames = (np.arange(50) % 7 == 0).astype(np.uint8)
    for span in (0, 1, 4, 15):
        s = S.snippet_labels(frames, span)
        placed = snippet_to_frame_scores(s.astype(float) + 10, frames.size)  # padding stays 0
        covered = placed > 0
        np.testing.assert_array_equal(placed[covered] - 10, frames[covered])


def test_synthetic_anomalies_are_off_distribution(tmp_path):
    labels = toy_labels()
    b = S.generate(str(tmp_path / "b"), labels, tiny_config(nuisance_prob=0.0))
    snip = np.load(tmp_path / "b" / "test_snippet_labels.npy")
    train = np.asarray(b.train, dtype=np.float64)
    test = np.asarray(b.test, dtype=np.float64)
    d2 = (test ** 2).sum(1)[:, None] + (train ** 2).sum(1)[None, :] - 2 * test @ train.T
    nn = np.sqrt(np.maximum(d2, 0).min(1))
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(snip, nn)  # realistic difficulty: clearly informative, far from perfect
    assert 0.58 < auc < 0.99, auc
    events = json.loads((tmp_path / "b" / "events.json").read_text())
    assert len(events) == 6  # one per maximal anomalous snippet run (video 3 has two, video 4 none)


def test_synthetic_deterministic_and_seeded(tmp_path):
    labels = toy_labels()
    a = S.generate(str(tmp_path / "a"), labels, tiny_config())
    b = S.generate(str(tmp_path / "b"), labels, tiny_config())
    c = S.generate(str(tmp_path / "c"), labels, tiny_config(seed=4))
    for name in ("train_features.npy", "test_features.npy", "train_video_ids.npy", "test_snippet_labels.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert not np.array_equal(np.asarray(a.train), np.asarray(c.train))
    assert not np.array_equal(np.asarray(a.test), np.asarray(c.test))
    # an existing bundle with the same configuration is reused, not rewritten
    mtime = os.path.getmtime(tmp_path / "a" / "train_features.npy")
    S.generate(str(tmp_path / "a"), labels, tiny_config())
    assert os.path.getmtime(tmp_path / "a" / "train_features.npy") == mtime


@pytest.mark.parametrize("kw,message", [
    (dict(tau_range=(0, 10)), "tau_range"), (dict(noise_ar=1.5), "noise_ar"), (dict(anomaly_median=0), "anomaly_median"),
    (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"), (dict(dim=40.7), "dim"), (dict(latent_shift=(4, 2)), "latent_shift"),
    (dict(latent_scene=-1), "latent_scene"), (dict(scale="0.1"), "scale"), (dict(test_videos="01_001"), "test_videos"),
    (dict(test_videos=()), "test_videos"), (dict(nuisance_prob=2), "nuisance_prob")])
def test_synthetic_config_is_checked_at_construction(kw, message):
    """Bad settings fail when the config is made (they failed deep in generate(): math domain errors,
    numpy TypeErrors, 'Probabilities contain NaN', a test_videos string split into characters)."""
    from llsh_index import ConfigError

    with pytest.raises(ConfigError, match=message):
        tiny_config(**kw)


def test_generate_checks_its_labels_and_open_bundle_names_damage(tmp_path):
    from llsh_index import ConfigError, IndexFormatError, InvalidInputError

    labels = toy_labels()
    with pytest.raises(InvalidInputError, match="non-empty mapping"):
        S.generate(str(tmp_path / "a"), {}, tiny_config())
    bad = dict(labels)
    name = sorted(bad)[0]
    bad[name] = np.where(np.asarray(bad[name]) > 0, 5, 0)
    with pytest.raises(InvalidInputError, match="0/1 frame labels"):
        S.generate(str(tmp_path / "a"), bad, tiny_config())
    with pytest.raises(ConfigError, match="not in the label layout"):
        S.generate(str(tmp_path / "a"), labels, tiny_config(test_videos=("nope",)))
    S.generate(str(tmp_path / "b"), labels, tiny_config())
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    edits = [("version", dict(manifest, version=99), "expected version 1"),
             ("list", [1, 2], "expected format"),
             ("no-dim", {k: v for k, v in manifest.items() if k != "dim"}, "damaged feature bundle .KeyError"),
             ("ranges", dict(manifest, test_videos=manifest["test_videos"][1:]), "starts at")]
    for what, m, message in edits:
        (tmp_path / "b" / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(IndexFormatError, match=message):
            S.open_bundle(str(tmp_path / "b"))
    (tmp_path / "b" / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="JSONDecodeError"):
        S.open_bundle(str(tmp_path / "b"))
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "b" / "labels.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(IndexFormatError, match="damaged feature bundle"):
        S.open_bundle(str(tmp_path / "b"))


def test_generate_replaces_only_bundles(tmp_path):
    """A folder that is not a bundle (or a stray '.partial' that is not ours) is refused, never
    deleted; an empty folder and an older bundle are replaced."""
    from llsh_index import WritePathError

    labels = toy_labels()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    with pytest.raises(WritePathError, match="is not a feature bundle"):
        S.generate(str(mine), labels, tiny_config())
    assert (mine / "precious.txt").read_text() == "keep me" and not (tmp_path / "mine.partial").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(WritePathError, match="is a file"):
        S.generate(str(tmp_path / "file"), labels, tiny_config())
    (tmp_path / "b.partial").mkdir()
    (tmp_path / "b.partial" / "notes.txt").write_text("keep me too")
    with pytest.raises(WritePathError, match="not an unfinished bundle"):
        S.generate(str(tmp_path / "b"), labels, tiny_config())
    assert (tmp_path / "b.partial" / "notes.txt").exists()
    (tmp_path / "empty").mkdir()
    S.generate(str(tmp_path / "empty"), labels, tiny_config())
    b = S.generate(str(tmp_path / "empty"), labels, tiny_config(seed=9))  # another bundle: replaced
    assert b.n_train > 0 and not (tmp_path / "empty.partial").exists()
    assert not (tmp_path / "empty" / ".llsh-partial-bundle").exists()


def test_synthetic_streams_without_holding_n_by_d(tmp_path):
    labels = toy_labels()
    cfg = tiny_config(scale=60000 / S.ST_TRAIN_SNIPPETS, dim=64, n_train_videos=100)
    tracemalloc.start()
    try:
        S.generate(str(tmp_path / "b"), labels, cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full = cfg.n_train * cfg.dim * 4
    assert peak < full / 4, f"generate() traced {peak} bytes at peak, the training matrix is {full}"


def test_synthetic_real_st_layout(tmp_path):
    path = shared_path("vad_groundtruth", "ST_gt.npz")
    labels = S.load_st_layout(str(path))
    assert len(labels) == 107 and sum(v.size for v in labels.values()) == 40791
    names = ("01_0014", "03_0059", "12_0175", "04_0011")
    cfg = tiny_config(test_videos=names, snippet_span=15)
    b = S.generate(str(tmp_path / "st"), labels, cfg)
    assert [v["name"] for v in b.test_videos] == list(names)
    snip = np.load(tmp_path / "st" / "test_snippet_labels.npy")
    for v in b.test_videos:
        gt = labels[v["name"]]
        assert v["n_frames"] == gt.size and v["count"] == gt.size - 15
        np.testing.assert_array_equal(snip[v["start"]:v["start"] + v["count"]], gt[8:8 + v["count"]])
        np.testing.assert_array_equal(b.labels[v["name"]], gt)


# ----------------------------------------------------------------------------- benchmark


def tiny_settings(**kw):
    base = dict(knn_k=64, kmeans_ks=(4, 16), kmeans_iter=5, n_tables=4, n_bits=8, iterations=4, batch_size=32,
                queue_size=128, max_offset=20, isolate=False)
    base.update(kw)
    return T2.Settings(**base)


def test_run_table2_smoke(tmp_path):
    labels = toy_labels()
    cfg = tiny_config()
    S.generate(str(tmp_path / "data"), labels, cfg)
    s = tiny_settings()
    res = T2.run_table2(str(tmp_path / "data"), str(tmp_path / "out"), s, command="pytest", dataset="tiny",
                        progress=False, log=lambda *a, **k: None)
    keys = [r["key"] for r in res["rows"]]
    assert keys == ["knn", "kmeans4", "kmeans16", "lsh", "llsh", "light", "squared"]
    n, m, d, b, r = cfg.n_train, res["data"]["n_test"], 32, 4, 8
    assert res["data"]["n_train"] == n and m == sum(v.size - cfg.snippet_span for v in labels.values())
    rows = {r_["key"]: r_ for r_ in res["rows"]}
    for row in res["rows"]:
        assert 0.0 <= row["macro_auc"] <= 1.0 and 0.0 <= row["micro_auc"] <= 1.0
        assert row["n_single_class"] == 2  # the all-normal and the all-anomalous toy videos
        assert row["disk_bytes"] == os.path.getsize(row["model_path"]) > 0
        assert row["build_s"] >= 0 and row["score_s"] > 0
        assert set(row["build_mem"]) >= {"peak_rss_mb", "peak_anon_mb"}
    # formulas
    assert rows["knn"]["mults_formula_per_query"] == n * d
    assert rows["knn"]["mults_counted_total"] == m * (n * d + 2 * d)
    for k in (4, 16):
        assert rows[f"kmeans{k}"]["mults_formula_per_query"] == k * d
        assert rows[f"kmeans{k}"]["mults_counted_total"] == m * (k * d + d)
    for key in ("lsh", "llsh"):
        nc = rows[key]["n_compared"]
        assert 0 < nc <= m * b * n
        assert rows[key]["mults_formula_per_query"] == pytest.approx(d * b * r + nc / m * r)
        assert rows[key]["mults_counted_total"] == m * (d * b * r + 2 * d) + nc * r
    for key, per in (("light", 2 * r), ("squared", 2 * r + 3)):
        nc = rows[key]["n_compared"]
        assert 0 < nc <= m * b  # one bucket statistic per hit table
        assert rows[key]["mults_counted_total"] == m * (d * b * r + 2 * d) + nc * per
    assert rows["light"]["mults_formula_per_query"] == d * b * r + b * r
    assert rows["squared"]["mults_formula_per_query"] == d * b * r + 2 * b * r
    # trained rows share the trained layers; light/squared files hold bucket statistics only
    assert rows["llsh"]["train_s"] == rows["light"]["train_s"] > 0 and rows["lsh"]["train_s"] == 0
    assert rows["light"]["disk_bytes"] < rows["llsh"]["disk_bytes"]
    assert rows["light"]["n_compared"] == rows["squared"]["n_compared"]
    # files
    out = tmp_path / "out"
    for f in ("table2.md", "table2.json", "table2.png"):
        assert (out / f).stat().st_size > 0
    assert (out / "table2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    js = json.loads((out / "table2.json").read_text())
    assert [r_["key"] for r_ in js["rows"]] == keys and js["settings"]["knn_k"] == 64
    md = (out / "table2.md").read_text()
    for row in res["rows"]:
        assert f"| {row['name']} |" in md
    (disk,) = [t for t in res["targets"] if "disk" in t["target"]]
    assert disk["pass"] is bool(rows["llsh"]["disk_bytes"] <= 316e6 / 28e9 * rows["knn"]["disk_bytes"])
    assert {t["target"].split()[0] for t in res["targets"]} == {"LLSH"}


def test_run_table2_probe_rows(tmp_path):
    from llsh_index import LearnableLSHIndex

    S.generate(str(tmp_path / "data"), toy_labels(), tiny_config())
    res = T2.run_table2(str(tmp_path / "data"), str(tmp_path / "out"),
                        tiny_settings(methods=("lsh", "llsh", "lsh_probes", "llsh_probes"), probes=5),
                        progress=False, log=lambda *a, **k: None)
    rows = {r["key"]: r for r in res["rows"]}
    assert set(rows) == {"lsh", "llsh", "lsh_probes", "llsh_probes"}
    assert rows["lsh_probes"]["name"] == "LSH, 5 probes (ours)"
    bundle = S.open_bundle(str(tmp_path / "data"))
    for key in ("lsh", "llsh"):
        assert rows[f"{key}_probes"]["n_compared"] >= rows[key]["n_compared"]  # more buckets visited
        index = LearnableLSHIndex.load(rows[f"{key}_probes"]["model_path"])
        got = np.load(tmp_path / "out" / "scores" / f"{key}_probes.npy")
        np.testing.assert_array_equal(got, index.score(np.asarray(bundle.test), n_probes=5))


def test_run_table2_lookup_extension_row(tmp_path):
    from llsh_index import LearnableLSHIndex

    S.generate(str(tmp_path / "data"), toy_labels(), tiny_config())
    res = T2.run_table2(str(tmp_path / "data"), str(tmp_path / "out"),
                        tiny_settings(methods=("llsh", "llsh_ours"), miss_probes=9, reduce="mean"),
                        progress=False, log=lambda *a, **k: None)
    rows = {r["key"]: r for r in res["rows"]}
    assert rows["llsh_ours"]["name"] == "LLSH, 9 probes on a miss, mean over tables (ours)"
    bundle = S.open_bundle(str(tmp_path / "data"))
    index = LearnableLSHIndex.load(rows["llsh_ours"]["model_path"])
    got = np.load(tmp_path / "out" / "scores" / "llsh_ours.npy")
    np.testing.assert_array_equal(got, index.score(np.asarray(bundle.test), miss_probes=9, reduce="mean"))
    assert not np.array_equal(got, np.load(tmp_path / "out" / "scores" / "llsh.npy"))


def test_run_table2_centred_projection_and_bits(tmp_path):
    """--project-pcs / --centre-layers / --n-bits reach the trained layers and the saved models,
    and the rows say what they are."""
    from torch.nn import functional as F

    from llsh_index import LearnableLSHIndex

    S.generate(str(tmp_path / "data"), toy_labels(), tiny_config())
    res = T2.run_table2(str(tmp_path / "data"), str(tmp_path / "out"),
                        tiny_settings(methods=("lsh", "llsh"), project_pcs=3, centre_layers=True, n_bits=6,
                                      code_dtype="float16"),
                        progress=False, log=lambda *a, **k: None)
    rows = {r["key"]: r for r in res["rows"]}
    assert rows["llsh"]["name"] == "LLSH [3 PCs projected, centred] (float16 codes)"
    assert rows["lsh"]["name"] == "LSH (untrained) (float16 codes)"
    llsh = LearnableLSHIndex.load(rows["llsh"]["model_path"])
    lsh = LearnableLSHIndex.load(rows["lsh"]["model_path"])
    assert llsh.n_bits == lsh.n_bits == 6 and llsh.code_dtype == lsh.code_dtype == "float16"
    train = np.asarray(S.open_bundle(str(tmp_path / "data")).train)
    x = F.layer_norm(torch.from_numpy(train), (train.shape[1],)).double()
    mean_dir = F.normalize(x.mean(0), dim=0)
    assert float((llsh.encoder.weight.detach().double() @ mean_dir).abs().max()) < 1e-5


def test_run_table2_isolated_worker(tmp_path):
    """The subprocess path (one worker per method, peak RSS reset per phase)."""
    S.generate(str(tmp_path / "data"), toy_labels(), tiny_config())
    res = T2.run_table2(str(tmp_path / "data"), str(tmp_path / "out"),
                        tiny_settings(isolate=True, methods=("kmeans4",), kmeans_ks=(4,)), progress=False,
                        log=lambda *a, **k: None)
    (row,) = res["rows"]
    assert row["key"] == "kmeans4" and 0 <= row["macro_auc"] <= 1
    assert (tmp_path / "out" / "jobs" / "kmeans4.result.json").exists()
    assert row["build_mem"]["peak_rss_mb"] >= 0


def test_isolated_worker_failure_carries_its_traceback(tmp_path):
    """A failing worker's error names the exception it died of, not only its exit status."""
    job = {"bundle": str(tmp_path / "no_bundle"), "out_dir": str(tmp_path / "out"), "progress": False,
           "settings": tiny_settings(isolate=True).to_json(), "layers": "", "task": "method",
           "spec": {"kind": "kmeans", "key": "kmeans4", "K": 4}}
    with pytest.raises(RuntimeError, match=r"worker kmeans4 failed with exit status 1 .*traceback:[\s\S]*Error"):
        T2._dispatch(job, "kmeans4", str(tmp_path / "out"), isolate=True)


def test_features_dir_layout_converts(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "feats"
    (src / "train").mkdir(parents=True)
    (src / "test").mkdir()
    train = [rng.standard_normal((n, 8)).astype(np.float32) for n in (30, 5, 12)]
    for i, a in enumerate(train):
        np.save(src / "train" / f"v{i + 1}.npy", a)
    labels = {"t1": np.r_[np.zeros(10), np.ones(5)].astype(np.uint8), "t2": np.zeros(9, np.uint8)}
    tests = {"t1": rng.standard_normal((12, 8)), "t2": rng.standard_normal((9, 8)).astype(np.float32)}
    for k, a in tests.items():
        np.save(src / "test" / f"{k}.npy", a)
    np.savez(src / "labels.npz", **labels)
    root = T2.prepare_features_dir(str(src), str(tmp_path / "bundle"))
    b = S.open_bundle(root)
    np.testing.assert_array_equal(np.asarray(b.train), np.concatenate(train))
    assert np.bincount(b.train_video_ids).tolist() == [30, 5, 12]
    np.testing.assert_allclose(np.asarray(b.test), np.concatenate([tests["t1"], tests["t2"]]).astype(np.float32))
    assert [(v["name"], v["count"], v["n_frames"]) for v in b.test_videos] == [("t1", 12, 15), ("t2", 9, 9)]
    assert T2.prepare_features_dir(root, "unused") == root  # a bundle is used as is


def test_ped2_option_fails_clearly_when_absent(tmp_path):
    missing = tmp_path / "ped2_demo.npz"
    with pytest.raises(SystemExit, match="does not exist"):
        T2.prepare_ped2(str(missing), str(tmp_path / "cache"))


def test_ped2_demo_features_convert(tmp_path):
    datasets = pytest.importorskip("llsh_index.datasets")
    if not hasattr(datasets, "load_ped2_demo"):
        pytest.skip("llsh_index.datasets.load_ped2_demo is not available")
    # the imported package's own copy: site-packages for an installed wheel, not the checkout's
    path = Path(getattr(datasets, "PED2_DEMO_PATH", ROOT / "llsh_index" / "data" / "ped2_demo.npz"))
    if not path.exists():
        pytest.skip(f"Ped2 demo features not found at {path} (made by scripts/make_demo_features.py)")
    demo = datasets.load_ped2_demo(path)
    b = S.open_bundle(T2.prepare_ped2(str(path), str(tmp_path / "ped2")))
    assert b.dim == demo.dim
    assert b.n_train == sum(a.shape[0] for a in demo.train.values())
    assert len(b.manifest["train_videos"]) == len(demo.train)
    assert [v["name"] for v in b.test_videos] == sorted(demo.test)
    for v in b.test_videos:
        np.testing.assert_array_equal(b.labels[v["name"]], demo.test_labels[v["name"]])
        np.testing.assert_allclose(b.test[v["start"]:v["start"] + v["count"]], demo.test[v["name"]], rtol=1e-6)


def _i3d_layout(tmp_path, rng, k=16):
    """--features DIR of one snippet per k frames (I3D-style): test snippet i covers frames [k i, k i + k)
    and its features move with the labels there."""
    src = tmp_path / "feats"
    (src / "train").mkdir(parents=True)
    (src / "test").mkdir()
    base, away = 3 * rng.standard_normal(8), 3 * rng.standard_normal(8)  # normal: near base; anomalous: moved away
    for i in range(3):
        np.save(src / "train" / f"v{i}.npy", (base + 0.3 * rng.standard_normal((40, 8))).astype(np.float32))
    labels = {"t1": (np.arange(200) >= 120).astype(np.uint8),
              "t2": ((np.arange(150) >= 30) & (np.arange(150) < 70)).astype(np.uint8), "t3": np.zeros(90, np.uint8)}
    for v, lab in labels.items():
        chunks = -(-lab.size // k)
        share = np.array([lab[i * k:i * k + k].mean() for i in range(chunks)])  # anomalous share of each snippet
        x = base + 0.3 * rng.standard_normal((chunks, 8)) + np.outer(share, away)
        np.save(src / "test" / f"{v}.npy", x.astype(np.float32))
    np.savez(src / "labels.npz", **labels)
    return src, labels


def test_features_dir_snippet_frames_expands_snippet_scores(tmp_path):
    """--features DIR of one snippet per 16 frames: centred placement padded ~94% of the frames with 0
    (chance-level AUC); it is refused before any method runs, and --snippet-frames 16 spreads each
    snippet's score over its frames as `import --snippet-frames 16` + `score` do (snippet i at its
    middle frame 16 i + 8, frames between interpolated).  Oracle: that expansion written out, scipy's
    smoothing (sigma 12 frames), sklearn's AUC, on the KNN row's saved snippet scores."""
    from scipy.ndimage import gaussian_filter1d
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(31)
    src, labels = _i3d_layout(tmp_path, rng)
    with pytest.raises(SystemExit, match=r"align='centre'.*padded.*pass --snippet-frames K"):
        T2.prepare_features_dir(str(src), str(tmp_path / "b0"))
    with pytest.raises(SystemExit, match=r"--snippet-frames 8: video 't1': 13 snippets of 8 frames cover 104"):
        T2.prepare_features_dir(str(src), str(tmp_path / "b8"), snippet_frames=8)  # a wrong K: refused as import does
    root = T2.prepare_features_dir(str(src), str(tmp_path / "b16"), snippet_frames=16)
    b = S.open_bundle(root)
    assert [(v["name"], v["count"], v["n_frames"], v["snippet_frames"]) for v in b.test_videos] == \
        [("t1", 13, 200, 16), ("t2", 10, 150, 16), ("t3", 6, 90, 16)]
    res = T2.run_table2(root, str(tmp_path / "out"), tiny_settings(methods=("knn",), knn_k=4), progress=False,
                        log=lambda *a, **k: None)
    snippet_scores = b.split_scores(np.load(tmp_path / "out" / "scores" / "knn.npy"))
    per, cat_s, cat_l = {}, [], []
    for v, lab in labels.items():
        s = snippet_scores[v].astype(np.float64)
        middle = np.minimum(16 * np.arange(s.size) + 8, lab.size - 1)
        frames = np.interp(np.arange(lab.size), middle, s).astype(np.float32)  # as `score` writes them
        sm = gaussian_filter1d(frames.astype(np.float64), 12)
        if 0 < lab.sum() < lab.size:
            per[v] = roc_auc_score(lab, sm)
        cat_s.append((sm - sm.min()) / (sm.max() - sm.min()))
        cat_l.append(lab)
    (row,) = res["rows"]
    assert row["macro_auc"] == pytest.approx(np.mean(list(per.values())), abs=1e-9)
    assert row["micro_auc"] == pytest.approx(roc_auc_score(np.concatenate(cat_l), np.concatenate(cat_s)), abs=1e-9)
    assert row["micro_auc"] > 0.8 and res["auc_protocol"]["align"].startswith("per frame: snippets of 16 frames")
    with pytest.raises(SystemExit):  # only --features DIR has snippets of K frames to spread
        T2.main(["--quick", "--snippet-frames", "16", "--out", str(tmp_path / "q")])


def test_run_table2_reports_an_undefined_macro_auc(tmp_path):
    """Test videos that are each all normal or all anomalous: metrics.evaluate's macro-AUC is None
    (undefined), which the log line, the Markdown table and the targets formatted with :.4f (a
    TypeError after the scoring).  They say "undefined", the JSON holds null and the macro-AUC
    targets are reported without a verdict; micro-AUC, defined on the pooled frames, is kept."""
    labels = {"01_0000": np.zeros(120, np.uint8), "02_0001": np.ones(110, np.uint8)}
    S.generate(str(tmp_path / "data"), labels, tiny_config())
    logged = []
    res = T2.run_table2(str(tmp_path / "data"), str(tmp_path / "out"), tiny_settings(methods=("knn", "lsh", "llsh")),
                        progress=False, log=lambda *a, **k: logged.append(" ".join(map(str, a))))
    assert [r["key"] for r in res["rows"]] == ["knn", "lsh", "llsh"]
    for row in res["rows"]:
        assert row["macro_auc"] is None and 0.0 <= row["micro_auc"] <= 1.0
        assert f"| {row['name']} | undefined | {row['micro_auc']:.4f} |" in (tmp_path / "out" / "table2.md").read_text()
    assert sum(line.startswith("[table2]   macro undefined micro ") for line in logged) == 3
    js = json.loads((tmp_path / "out" / "table2.json").read_text())
    assert [r["macro_auc"] for r in js["rows"]] == [None, None, None]
    macro = {t["target"]: t for t in res["targets"] if "macro-AUC" in t["target"]}
    assert [(t["value"], t["pass"]) for t in macro.values()] == [
        ("undefined vs undefined", None), ("LLSH undefined vs LSH (untrained) undefined", None)]
    assert (tmp_path / "out" / "table2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one defined AUC beside an undefined one: no difference is taken, the defined one is shown
    rows = [dict(r) for r in res["rows"]]
    rows[0]["macro_auc"] = 0.75
    within = next(t for t in T2.evaluate_targets(rows) if "within 1 point" in t["target"])
    assert within["value"] == "undefined vs 0.7500" and within["pass"] is None
