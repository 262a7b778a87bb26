"""_cuda_engine's API over torch CPU tensors, computed by the C++ CPU engine.

Lets the index's device (tensor) code path run in CI without a GPU: tests/test_tensor_path.py and
tests/test_sharded.py put it behind llsh_index._cuda_engine; the CUDA kernels themselves are
checked by tests/test_cuda_engine.py on a GPU.
"""
import numpy as np
import torch

from llsh_index import _C, _engine


class FakeDeviceEngine:
    @staticmethod
    def binarize(x, from_logits=False, inplace=False):
        codes = x if inplace else x.clone()
        return codes, torch.from_numpy(_C.binarize_cpu(codes.numpy(), from_logits=from_logits))

    @staticmethod
    def build_tables(keys, codes, ids, keep_codes=True):
        half = codes.dtype == torch.float16
        c = codes.numpy().view(np.uint16) if half else codes.numpy()
        t = _C.build_tables_cpu(keys.numpy(), c, ids.numpy(), keep_codes=keep_codes)
        out = {k: (None if v is None else torch.from_numpy(v)) for k, v in t.items()}
        if half and out["codes"] is not None:
            out["codes"] = out["codes"].view(torch.float16)
        return out

    @staticmethod
    def lookup(tables, n_items, query_codes, query_keys, mode=0, miss_value=float("inf"), *, return_min=False,
               return_visited=False, return_partial=False):
        if return_min or return_visited:
            raise NotImplementedError("the fake engine does not provide return_min / return_visited")
        host = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in tables.items()}
        host["n_items"] = n_items
        out, _, sums, counts = _engine.lookup(host, query_codes.numpy(), query_keys.numpy(), mode, miss_value,
                                              partial=True)
        if return_partial:
            return torch.from_numpy(out), torch.from_numpy(sums), torch.from_numpy(counts)
        return torch.from_numpy(out)


def install(monkeypatch) -> None:
    """Put the fake engine behind llsh_index._cuda_engine for one test: every torch tensor takes the
    index's device path (tables kept as tensors), computed by the C++ CPU engine."""
    import llsh_index._cuda_engine as ce

    monkeypatch.setattr(_engine, "on_device", lambda x: isinstance(x, torch.Tensor))
    for name in ("binarize", "build_tables", "lookup"):
        monkeypatch.setattr(ce, name, getattr(FakeDeviceEngine, name))
