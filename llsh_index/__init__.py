"""llsh_index: learnable locality-sensitive hashing (LLSH) for video anomaly detection.

    from llsh_index import LearnableLSHIndex
    index = LearnableLSHIndex(n_tables=8, n_bits=32).fit(train, video_ids=vids).add(train)
    scores = index.score(test)
"""
from __future__ import annotations

from typing import Tuple, Union

from . import _C
from .errors import (ConfigError, CudaUnavailableError, DeviceMismatchError, IndexFileNotFoundError,
                     IndexFormatError, IndexStateError, InvalidDTypeError, InvalidInputError, LLSHError, NotFittedError,
                     UndertrainedWarning, WritePathError)
from .index import LearnableLSHIndex
from .sharded import ShardedIndex

__version__ = "0.1.0"


def __getattr__(name):
    # scikit-learn is only imported when a detector is asked for
    if name == "LLSHDetector":
        from .sklearn import LLSHDetector

        return LLSHDetector
    if name == "LLSHPyODDetector":  # PyOD, an optional dependency, likewise (not in __all__: a star import
        # without PyOD would fail)
        from .pyod_detector import LLSHPyODDetector

        return LLSHPyODDetector
    if name in ("load_scores", "save_scores", "load_score_meta"):  # score files, as the command line writes them
        from . import cli

        return getattr(cli, name)
    if name == "StreamScorer":  # scipy and the video readers, when asked for
        from .stream import StreamScorer

        return StreamScorer
    raise AttributeError(f"module 'llsh_index' has no attribute {name!r}")


def cuda_available(verbose: bool = False) -> Union[bool, Tuple[bool, str]]:
    """Whether the CUDA engine can run here: built with CUDA, and a device is present.

    With verbose=True returns (ok, reason), the reason saying why not when it cannot.
    """
    built, n_devices, why = _C.cuda_status()
    ok = bool(built and n_devices > 0)
    if ok:
        try:
            import torch

            if not torch.cuda.is_available():
                ok, why = False, "CUDA backend built and a device is present, but this torch build has no CUDA"
        except ImportError:
            ok, why = False, "torch is not installed"
    return (ok, why) if verbose else ok


__all__ = ["LearnableLSHIndex", "ShardedIndex", "LLSHDetector", "StreamScorer", "cuda_available", "LLSHError", "InvalidInputError", "InvalidDTypeError",
           "DeviceMismatchError", "NotFittedError", "ConfigError", "IndexFormatError", "IndexFileNotFoundError",
           "IndexStateError",
           "CudaUnavailableError", "WritePathError", "UndertrainedWarning", "save_scores", "load_scores",
           "load_score_meta", "__version__"]
