"""benchmarks/demo_seeds.py: the per-seed collection, the table's statistics and the figure.

The demo itself is tested in test_cli.py; here run_demo is replaced by a stand-in whose rows are
known, so the aggregation is checked against NumPy on those rows, in well under a second.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="matplotlib is not installed (the benchmark draws a PNG)")

ROOT = Path(__file__).resolve().parents[1]


def load_module():
    spec = importlib.util.spec_from_file_location("demo_seeds", ROOT / "benchmarks" / "demo_seeds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


METHODS = ("LSH", "LLSH", "KNN k=1")


def fake_rows(seed):
    rng = np.random.default_rng(seed)
    return [{"method": m, "micro_auc": float(rng.uniform(0.5, 0.9)), "macro_auc": float(rng.uniform(0.5, 0.9))}
            for m in METHODS]


@pytest.fixture
def mod(monkeypatch):
    m = load_module()
    calls = []

    def run_demo(out_dir, quiet, seed):
        calls.append((seed, quiet))
        return {"rows": fake_rows(seed)}

    monkeypatch.setattr(m, "run_demo", run_demo)
    m.calls = calls
    return m


def test_collect_keeps_each_method_per_seed_in_order(mod, tmp_path):
    seeds = [3, 0, 7]
    got = mod.collect(seeds, str(tmp_path))
    assert mod.calls == [(s, True) for s in seeds]
    assert list(got) == list(METHODS)
    for i, m in enumerate(METHODS):
        assert got[m]["micro"] == [fake_rows(s)[i]["micro_auc"] for s in seeds]
        assert got[m]["macro"] == [fake_rows(s)[i]["macro_auc"] for s in seeds]


def test_table_states_mean_min_max_and_the_target(mod, tmp_path):
    seeds = [0, 1, 2, 3]
    per = mod.collect(seeds, str(tmp_path))
    text = mod.table(per, seeds)
    micro = np.array([[r["micro_auc"] for r in fake_rows(s)] for s in seeds])  # (seeds, methods)
    macro = np.array([[r["macro_auc"] for r in fake_rows(s)] for s in seeds])
    for i, m in enumerate(METHODS):
        row = next(line for line in text.splitlines() if line.startswith(f"| {m} |"))
        want = (f"| {m} | {micro[:, i].mean():.4f} ({micro[:, i].min():.4f}-{micro[:, i].max():.4f}) | "
                f"{macro[:, i].mean():.4f} ({macro[:, i].min():.4f}-{macro[:, i].max():.4f}) |")
        assert row == want
    assert f"{micro[:, 2].mean() - 0.01:.4f}" in text.splitlines()[-1]


def test_table_without_knn_has_no_target(mod, tmp_path):
    per = mod.collect([0], str(tmp_path))
    del per["KNN k=1"]  # faiss missing: the demo has no KNN row
    assert "target" not in mod.table(per, [0])


def test_an_undefined_macro_auc_is_said_not_averaged(mod, tmp_path):
    """metrics.evaluate's macro-AUC is None where no video has both classes: the table averages the
    seeds that have one and says how many do not (a TypeError before), and the figure draws the rest."""
    per = {"LLSH": {"micro": [0.7, 0.8, 0.9], "macro": [0.6, None, 0.8]},
           "LSH": {"micro": [0.5, 0.6, 0.7], "macro": [None, None, None]},
           "KNN k=1": {"micro": [0.8, 0.8, 0.8], "macro": [0.9, None, 0.9]}}
    lines = mod.table(per, [0, 1, 2]).splitlines()
    assert lines[2] == "| LLSH | 0.8000 (0.7000-0.9000) | 0.7000 (0.6000-0.8000), undefined for 1 of 3 seeds |"
    assert lines[3] == "| LSH | 0.6000 (0.5000-0.7000) | undefined |"
    pytest.importorskip("matplotlib")
    mod.plot(per, str(tmp_path / "f.png"), [0, 1, 2])
    assert (tmp_path / "f.png").stat().st_size > 5_000
    per["KNN k=1"]["macro"] = [None, None, None]  # no reference line to draw where it has none
    mod.plot(per, str(tmp_path / "g.png"), [0, 1, 2])
    assert (tmp_path / "g.png").stat().st_size > 5_000


def test_main_writes_json_table_and_figure(mod, tmp_path):
    from PIL import Image

    assert mod.main(["--seeds", "0,1", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "demo_seeds.json").read_text())
    assert saved["seeds"] == [0, 1]
    assert saved["per_method"]["LLSH"]["micro"] == [fake_rows(0)[1]["micro_auc"], fake_rows(1)[1]["micro_auc"]]
    assert (tmp_path / "demo_seeds.md").read_text().startswith("| method |")
    with Image.open(tmp_path / "demo_seeds.png") as img:
        assert img.format == "PNG" and img.width > 600 and img.height > 200


def test_bad_seeds_fail_at_parsing(mod, tmp_path):
    with pytest.raises(SystemExit) as exc:
        mod.main(["--seeds", "-1", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert mod.calls == []
