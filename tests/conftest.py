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
