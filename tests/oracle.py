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


def probe_keys(code, n_probes):
    """The multi-probe sequence of one (query, table), written from its definition: the query's own
    key, then its keys with one or two bits flipped, cheapest first by the float32 sum of the
    flipped bits' |code - 0.5|; ties keep the order no flip, singles by rank, pairs (i < j) of ranks
    lexicographically, and bits of equal confidence rank by bit index."""
    code = np.asarray(code, np.float32)
    conf = np.abs(code - np.float32(0.5))
    rank = sorted(range(code.size), key=lambda i: (conf[i], i))
    cands = [((), np.float32(0))]
    cands += [((rank[a],), conf[rank[a]]) for a in range(code.size)]
    cands += [((rank[a], rank[c]), np.float32(conf[rank[a]] + conf[rank[c]]))
              for a in range(code.size) for c in range(a + 1, code.size)]
    cands = sorted(cands, key=lambda t: t[1])  # stable: ties keep the enumeration order
    base = key_of(code)
    out = []
    for flips, _ in cands[:n_probes]:
        k = list(base)
        for i in flips:
            k[i] ^= 1
        out.append(tuple(k))
    return out


def probe_table_distances(tables, query_codes, n_probes, mode="mean", miss_value=1e10):
    """Per (query, table): the smallest distance over the probed buckets that exist."""
    m, b, r = query_codes.shape
    out = np.full((m, b), np.inf)
    for i in range(m):
        for j in range(b):
            q64 = np.asarray(query_codes[i, j], np.float64)
            for key in probe_keys(query_codes[i, j], n_probes):
                bucket = tables[j].get(key)
                if bucket is None:
                    continue
                if mode == "mean":
                    v = np.mean(np.sqrt(((bucket - q64) ** 2).sum(axis=1)))
                elif mode == "light":
                    v = np.sqrt(((bucket.mean(axis=0) - q64) ** 2).sum())
                else:
                    v = np.mean(((bucket - q64) ** 2).sum(axis=1))
                out[i, j] = min(out[i, j], v)
    out[np.isinf(out)] = miss_value
    return out
