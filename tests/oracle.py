"""Plain NumPy version of the paper's definitions, written for the tests (independent of the engine).

Hash tables are a dict per table mapping the key -- the tuple of bits (code >= 0.5) -- to the list
of real-valued codes, exactly as the authors' llsh.py builds them.
"""
import numpy as np


def layer_norm(x, eps=1e-5):
    x = np.asarray(x, np.float64)
    mu = x.mean(axis=1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps)


def encode(x, weight, n_tables, n_bits):
    """LayerNorm (no affine) -> b Linear(d, r) without bias -> sigmoid; (M, b, r) float64."""
    logits = layer_norm(x) @ np.asarray(weight, np.float64).T
    return (1.0 / (1.0 + np.exp(-logits))).reshape(len(x), n_tables, n_bits)


def key_of(code):
    return tuple(int(v >= 0.5) for v in code)


def pack(code):
    return sum(int(v >= 0.5) << i for i, v in enumerate(code))


def build(codes, stored=None):
    """codes (N, b, r) -> list of b dicts key -> (n, r) float64 array of codes in item order.

    `stored` (default: codes) are the values kept in the buckets, e.g. the float16-rounded codes;
    keys always come from `codes`.
    """
    n, b, r = codes.shape
    stored = codes if stored is None else stored
    tables = []
    for j in range(b):
        t = {}
        for i in range(n):
            t.setdefault(key_of(codes[i, j]), []).append(np.asarray(stored[i, j], np.float64))
        tables.append({k: np.stack(v) for k, v in t.items()})
    return tables


def table_distances(tables, query_codes, mode="mean", miss_value=1e10):
    m, b, r = query_codes.shape
    out = np.empty((m, b))
    for i in range(m):
        for j in range(b):
            q = np.asarray(query_codes[i, j], np.float64)
            bucket = tables[j].get(key_of(q))
            if bucket is None:
                out[i, j] = miss_value
            elif mode == "mean":
                out[i, j] = np.mean(np.sqrt(((bucket - q) ** 2).sum(axis=1)))
            elif mode == "light":
                out[i, j] = np.sqrt(((bucket.mean(axis=0) - q) ** 2).sum())
            elif mode == "squared":
                out[i, j] = np.mean(((bucket - q) ** 2).sum(axis=1))
            else:
                raise ValueError(mode)
    return out


def scores(tables, query_codes, mode="mean", miss_value=1e10):
    return table_distances(tables, query_codes, mode, miss_value).min(axis=1)
