import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/oracle.py

SHARED = Path(os.environ.get("LLSH_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def shared_path(*parts) -> Path:
    """Path under ../shared/data, or skip the test with the reason when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found at {p} (../shared/data is only present on development machines and CI)")
    return p


def need_cuda() -> None:
    """Skip the test, saying why, unless llsh_index's CUDA engine can run here."""
    import llsh_index

    ok, why = llsh_index.cuda_available(verbose=True)
    if not ok:
        pytest.skip(f"llsh_index CUDA engine unavailable: {why}")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def two_demo_videos():
    """The embedded Ped2 demo's first two training videos: (float32 rows, video ids).  With untrained
    layers at b 8, r 32, more than 10% of their leave-videos-out rows miss every table."""
    from llsh_index.datasets import load_ped2_demo

    demo = load_ped2_demo(None)
    names = sorted(demo.train)[:2]
    x = np.concatenate([demo.train[v] for v in names]).astype(np.float32)
    vid = np.concatenate([np.full(len(demo.train[v]), i) for i, v in enumerate(names)])
    return x, vid
