"""MoCo training of the hash layers (the paper's Sec. 3.2, following the authors' code).

A query encoder and a momentum key encoder; the flattened b*r code is L2-normalised; InfoNCE at
temperature tau against a FIFO queue of recent keys.  A training pair is a snippet and another
snippet of the same video within +-max_offset positions.  One epoch is n_videos * iterations
pairs, each drawn as in the reference: video = index mod n_videos, then a uniform snippet in it.

Static data (no video ids): the positive is one of a row's n_neighbors nearest rows, and with
project_pcs = k the layers first lose their components along the top-k principal directions of
the layer-normalised rows, which the gradient then never re-enters (LearnableLSHIndex.fit picks
FALLBACK_DEFAULTS for this case).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from torch.nn import functional as F

from .encoder import HashEncoder
from .errors import ConfigError


@dataclass
class TrainingConfig:
    iterations: int = 60          # epoch length = n_videos * iterations (reference: ST 60, Corridor 10)
    epochs: int = 1
    batch_size: int = 256
    lr: float = 1e-3
    sgd_momentum: float = 0.9
    weight_decay: float = 1e-4
    temperature: float = 0.2
    queue_size: int = 8192
    momentum: float = 0.999       # key-encoder EMA
    max_offset: int = 150         # positives within +-max_offset snippets of the same video
    n_neighbors: int = 10         # fallback without video_ids: positives among feature-space neighbours
    seed: int = 0
    progress: bool = True
    # Opt-in additions (the defaults are the paper's: a constant lr, no clipping).
    lr_schedule: str = "constant"  # "constant", "cosine" or "linear" decay to 0 over all steps
    warmup_steps: int = 0          # linear warm-up from lr / warmup_steps to lr over the first steps
    grad_clip: float = 0.0         # > 0: clip the gradient's L2 norm to this before each step
    project_mean: bool = False     # drop the gradient along the training data's mean direction (weight
                                   # decay still shrinks the layers' component there, lr * wd per step)
    project_pcs: int = 0           # remove the top-k principal directions of the data from the layers
    centre_layers: bool = False    # remove the data's mean direction from the layers (and their gradient)


LR_SCHEDULES = ("constant", "cosine", "linear")

# LearnableLSHIndex.fit's defaults for the settings below that the caller leaves out (None):
# with video_ids the paper's (TrainingConfig's), without them the static-data fallback's.  The
# fallback's were chosen on 7 of the 15 ADBench MVTec-AD categories and measured on the other 8
# (benchmarks/RESULTS.md, "Static data").  project_pcs: the codes stop depending on the 30 main
# directions of the normal data's variation (an anomaly detector wants them to: the untrained
# layers spend most of their variance there); the MoCo steps then train the rest.
FALLBACK_DEFAULTS = dict(iterations=3, batch_size=32, lr=1e-2, temperature=0.5, queue_size=64, momentum=0.99,
                         n_neighbors=5, project_mean=True, project_pcs=30)
PAPER_DEFAULTS = {k: getattr(TrainingConfig, k) for k in FALLBACK_DEFAULTS}
# The Ped2 demo's training schedule (`llsh-index demo`, `llsh-index fit --schedule demo`; e.g.
# index.fit(x, video_ids=vids, **DEMO_TRAINING)).  The paper's (lr 1e-3, 60 iterations per video) is
# sized for ShanghaiTech's 330 long training videos; Ped2 has 16 short ones, so the bundled demo
# trains longer with a larger step and a faster key encoder (chosen by measured micro-AUC on Ped2,
# README).  The projection of the 30 main principal directions (and the mean's) is the static-data
# fallback's, chosen on ADBench categories (benchmarks/RESULTS.md), not on Ped2.
DEMO_TRAINING = dict(iterations=2000, lr=0.2, momentum=0.99, queue_size=2048, batch_size=256, max_offset=150,
                     temperature=0.1, project_pcs=30, project_mean=True)
# below this many SGD steps at lr < FEW_STEPS_LR the layers stay where they started
FEW_STEPS, FEW_STEPS_LR = 50, 0.01


def barely_trains(steps: int, lr: float, projected_pcs: int = 0, centre_layers: bool = False,
                  continued: bool = False) -> bool:
    """Whether a fit() of `steps` SGD steps at `lr` leaves the layers at plain LSH (fit() warns, the CLI
    notes it).  Not when it projected (projected_pcs > 0) or centred the layers, which changes them
    whatever the steps, nor when it continued from trained layers (continued)."""
    if continued or projected_pcs > 0 or centre_layers:
        return False
    return steps < FEW_STEPS and lr < FEW_STEPS_LR


def _stream_seed(seed: int, stream: int):
    """numpy's seed of a training call: the seed itself for the first (numpy takes no negative
    seed; torch's does), a spawned child of it for a later one (stream = the steps already taken),
    so a later fit() draws new pairs and never another seed's first stream."""
    seed %= 2 ** 64
    return np.random.SeedSequence(seed, spawn_key=(stream,)) if stream else seed


def lr_at(step: int, total_steps: int, cfg: TrainingConfig) -> float:
    """The learning rate of step `step` (0-based) out of `total_steps`.

    Warm-up: steps 0..W-1 take lr * (step + 1) / W.  After it, with p = (step - W) / (total - W)
    in [0, 1): constant lr; cosine lr * (1 + cos(pi p)) / 2; linear lr * (1 - p).
    """
    w = cfg.warmup_steps
    if step < w:
        return cfg.lr * (step + 1) / w
    if cfg.lr_schedule == "constant" or total_steps <= w:
        return cfg.lr
    p = (step - w) / (total_steps - w)
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * p))
    return cfg.lr * (1.0 - p)


@dataclass
class TrainingLog:
    losses: List[float] = field(default_factory=list)   # mean InfoNCE loss per step
    lrs: List[float] = field(default_factory=list)      # learning rate of each step
    steps: int = 0
    positives: str = "temporal"
    projected_pcs: int = 0    # principal directions removed from the layers (project_pcs, capped)


class PairSampler:
    """Draws (anchor, positive) row indices.

    temporal: positive = uniform snippet of the same video within +-max_offset (clipped to the
    video).  neighbors: for features with no time order, positive = one of the n_neighbors
    nearest rows in cosine similarity (computed once with faiss, exact inner product).
    """

    def __init__(self, n_rows: int, video_ids: Optional[np.ndarray], cfg: TrainingConfig,
                 features: Optional[torch.Tensor] = None, stream: int = 0):
        self.rng = np.random.default_rng(_stream_seed(cfg.seed, stream))
        self.cfg = cfg
        if video_ids is not None:
            self.mode = "temporal"
            order = np.argsort(video_ids, kind="stable")  # rows of each video, in time order
            counts = np.bincount(video_ids)
            self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            self.counts = counts
            self.rows = order
            self.n_groups = counts.size
        else:
            self.mode = "neighbors"
            self.neighbors = _cosine_neighbors(features, cfg.n_neighbors)
            self.n_groups = n_rows

    def epoch(self) -> np.ndarray:
        """(n_pairs, 2) anchor/positive row indices for one shuffled epoch."""
        # The reference's dataset length: groups x iterations, a group being a video (or, with
        # no video ids, a row).
        n_pairs = self.n_groups * self.cfg.iterations
        group = self.rng.permutation(n_pairs) % self.n_groups
        if self.mode == "temporal":
            length = self.counts[group]
            t = (self.rng.random(n_pairs) * length).astype(np.int64)
            lo = np.maximum(t - self.cfg.max_offset, 0)
            hi = np.minimum(t + self.cfg.max_offset, length - 1)
            t_pos = lo + (self.rng.random(n_pairs) * (hi - lo + 1)).astype(np.int64)
            base = self.starts[group]
            return np.stack([self.rows[base + t], self.rows[base + t_pos]], axis=1)
        k = self.neighbors.shape[1]
        pick = self.neighbors[group, (self.rng.random(n_pairs) * k).astype(np.int64)]
        return np.stack([group, pick], axis=1)


def _cosine_neighbors(features: torch.Tensor, k: int) -> np.ndarray:
    import faiss

    x = F.normalize(F.layer_norm(features, (features.shape[1],)), dim=1).cpu().numpy().astype(np.float32)
    k = int(min(k + 1, x.shape[0]))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, nn_idx = index.search(x, k)
    if k == 1:  # a single row: its own positive
        return nn_idx
    # drop the row itself wherever faiss ranked it (a duplicate row may come first); where it is
    # not among the k found (k ties), drop the last
    rows = np.arange(x.shape[0])[:, None]
    is_self = nn_idx == rows
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k - 1)
    keep = np.ones_like(nn_idx, dtype=bool)
    keep[np.arange(x.shape[0]), drop] = False
    return nn_idx[keep].reshape(x.shape[0], k - 1)


# Above this width the d x d covariance (N*d^2 multiplications in float64, then a d^3 eigensolver)
# costs minutes to hours (the paper's d = 9216, N = 792,855: ~7e13), so the top directions come from
# a randomized block power iteration instead: a few passes of N*d*(k + oversampling).
EXACT_PCA_MAX_DIM = 4096


_CHUNK_ROWS = 65536  # rows layer-normalised at a time when reading the whole training set


def principal_directions(features: torch.Tensor, k: int, chunk_rows: int = _CHUNK_ROWS,
                         method: str = "auto", progress: bool = False,
                         mean: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(min(k, N-1, d), d) float64: the top principal directions of the layer-normalised rows.

    method "exact" (the default up to EXACT_PCA_MAX_DIM features): eigenvectors of the covariance,
    accumulated in float64 over chunks of rows (no float64 copy of the features).  "randomized"
    (the default above): block power iteration with k/2 + 10 extra directions, 8 passes, then
    Rayleigh-Ritz (Halko, Martinsson, Tropp 2011, Alg. 4.4), deterministic (its start is seeded).
    Both run on the features' device; each direction's sign is fixed (largest |entry| positive) so
    the result does not depend on the solver's sign choice.  mean: layer_normed_mean(features), when
    the caller already has it, saves the randomized method its own pass over the rows.
    """
    n, d = features.shape
    k = int(min(k, n - 1, d))
    if method not in ("auto", "exact", "randomized"):
        raise ValueError(f"method: expected 'auto', 'exact' or 'randomized', got {method!r}")
    from tqdm.auto import tqdm

    width = min(d, k + k // 2 + 10)
    exact = method == "exact" or (method == "auto" and (d <= EXACT_PCA_MAX_DIM or 2 * width >= d)) or k == 0
    # rows read: one pass (exact), or the mean (unless given), the power passes and Rayleigh-Ritz
    passes = 1 if exact else _RANDOMIZED_PASSES + 1 + (mean is None)
    bar = tqdm(total=n * passes, desc=f"principal directions (k={k})",
               unit="row", unit_scale=True, disable=not progress, leave=False)
    if exact:
        mean = torch.zeros(d, dtype=torch.float64, device=features.device)
        gram = torch.zeros(d, d, dtype=torch.float64, device=features.device)
        for x in _layer_normed_chunks(features, chunk_rows, torch.float64, bar):
            mean += x.sum(dim=0)
            gram += x.T @ x
        mean /= n
        _, vecs = torch.linalg.eigh(gram / n - torch.outer(mean, mean))  # ascending eigenvalues
        top = vecs[:, -k:].flip(1).T.contiguous() if k > 0 else vecs[:, :0].T
    else:
        if mean is None:
            mean = layer_normed_mean(features, chunk_rows, bar)
        top = _randomized_directions(features, mean.to(torch.float32), k, width, chunk_rows, bar=bar)
    bar.close()
    sign = torch.sign(top.gather(1, top.abs().argmax(dim=1, keepdim=True)))
    return (top * sign).cpu()


def _layer_normed_chunks(features: torch.Tensor, chunk_rows: int, dtype=torch.float32, bar=None):
    d = features.shape[1]
    for i in range(0, features.shape[0], chunk_rows):
        x = F.layer_norm(features[i:i + chunk_rows].to(torch.float32), (d,)).to(dtype)
        yield x
        if bar is not None:
            bar.update(x.shape[0])


def layer_normed_mean(features: torch.Tensor, chunk_rows: int = _CHUNK_ROWS, bar=None) -> torch.Tensor:
    """(d,) float64: the mean of the layer-normalised rows, one chunk at a time (float64 sums)."""
    total = sum(x.sum(dim=0, dtype=torch.float64) for x in _layer_normed_chunks(features, chunk_rows, bar=bar))
    return total / features.shape[0]


_RANDOMIZED_PASSES = 8


def _randomized_directions(features: torch.Tensor, mean: torch.Tensor, k: int, width: int, chunk_rows: int,
                           n_passes: int = _RANDOMIZED_PASSES, bar=None) -> torch.Tensor:
    n, d = features.shape
    dev = features.device
    gen = torch.Generator(device="cpu").manual_seed(0)
    basis = torch.linalg.qr(torch.randn(d, width, generator=gen, dtype=torch.float64).to(dev))[0]
    for it in range(n_passes + 1):
        last = it == n_passes
        q32 = basis.to(torch.float32)
        acc = torch.zeros(width, width, dtype=torch.float64, device=dev) if last else \
            torch.zeros(d, width, dtype=torch.float64, device=dev)
        for x in _layer_normed_chunks(features, chunk_rows, bar=bar):
            x -= mean  # centred in place: the chunk is a fresh tensor
            z = x @ q32  # float32 products, float64 sums over chunks
            acc += (z.T @ z if last else x.T @ z).to(torch.float64)
        if not last:  # the covariance applied to the basis, re-orthonormalised
            basis = torch.linalg.qr(acc)[0]
    _, vecs = torch.linalg.eigh(acc / n)  # Rayleigh-Ritz in the final basis
    top = basis @ vecs[:, -k:].flip(1)
    return top.T.contiguous()


def train_moco(encoder: HashEncoder, features: torch.Tensor, video_ids: Optional[np.ndarray],
               cfg: TrainingConfig, stream: int = 0) -> TrainingLog:
    """Trains `encoder` in place (it is the query encoder) and returns the loss log.

    stream: the SGD steps already taken by earlier calls on this encoder (0 on the first): a later
    call draws new pairs and a new initial queue from the same seed instead of repeating the first.
    """
    from tqdm.auto import tqdm

    torch_seed = cfg.seed if not stream else int(_stream_seed(cfg.seed, stream).generate_state(1, np.uint64)[0]) >> 1
    gen = torch.Generator(device="cpu").manual_seed(torch_seed)  # the only torch randomness: no global seeding
    device = encoder.weight.device
    sampler = PairSampler(features.shape[0], video_ids, cfg, features, stream=stream)
    code_len = encoder.n_tables * encoder.n_bits
    try:
        queue = F.normalize(torch.randn(cfg.queue_size, code_len, generator=gen), dim=1).to(device)
    except (RuntimeError, MemoryError) as exc:  # torch's allocator: the queue is queue_size x b*r float32
        raise ConfigError(f"queue_size: a queue of {cfg.queue_size} x {code_len} float32 "
                          f"({cfg.queue_size * code_len * 4 / 2 ** 30:.3g} GiB) cannot be allocated: {exc}") from exc
    ptr = 0
    mean = mean_dir = None
    if cfg.project_mean or cfg.centre_layers:  # unit mean of the layer-normalised training rows
        mean = layer_normed_mean(features)
        mean_dir = F.normalize(mean.to(torch.float32), dim=0).to(device)
    pcs = None
    # at most half of the d - 1 directions a layer-normalised row can take (and N - 1, all the
    # training rows span): small d keeps codes that still vary
    k = min(cfg.project_pcs, (features.shape[1] - 1) // 2)
    if k > 0:  # (k, d) orthonormal: the main directions of the normal data's variation
        pcs = principal_directions(features, k, progress=cfg.progress, mean=mean)
        pcs = pcs.to(device=device, dtype=encoder.weight.dtype)
        with torch.no_grad():  # the codes stop depending on them; training may not bring them back
            encoder.weight.sub_((encoder.weight @ pcs.T) @ pcs)
        if mean_dir is not None:  # its part outside them: the two projections then commute
            mean_dir = mean_dir - pcs.T @ (pcs @ mean_dir)
            mean_dir = F.normalize(mean_dir, dim=0) if float(mean_dir.norm()) > 1e-6 else None
    if cfg.centre_layers and mean_dir is not None:
        # Each hyperplane then passes through the training rows' mean: w . LN(x) has no constant
        # part, so every bit splits the normal data instead of being the same for nearly all of
        # it (after the projection the constant part dominates what is left, and the buckets
        # collapse into a few huge ones).  The gradient stays off the direction (as project_mean).
        with torch.no_grad():
            encoder.weight.sub_(torch.outer(encoder.weight @ mean_dir.to(encoder.weight.dtype), mean_dir))
    # the key encoder starts from the projected layers: copied before, it would keep the removed
    # directions (shrinking only by `momentum` per step) in every key and the queue
    key_encoder = copy.deepcopy(encoder)
    for p in key_encoder.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(encoder.parameters(), lr=cfg.lr, momentum=cfg.sgd_momentum,
                          weight_decay=cfg.weight_decay)
    log = TrainingLog(positives=sampler.mode, projected_pcs=0 if pcs is None else pcs.shape[0])
    encoder.train()
    n_pairs = sampler.n_groups * cfg.iterations
    batch = min(cfg.batch_size, n_pairs)
    n_steps = n_pairs // batch  # drop_last, as the reference's loader
    total_steps = n_steps * cfg.epochs
    for epoch in range(cfg.epochs):
        try:
            pairs = sampler.epoch()
        except (MemoryError, ValueError) as exc:  # an epoch's pairs are groups x iterations x 2 int64 (numpy says
            # ValueError "array is too big" past what it can address, MemoryError below that)
            raise ConfigError(f"iterations: {cfg.iterations} per video (or row) make {n_pairs} training pairs "
                              f"({n_pairs * 16 / 2 ** 30:.3g} GiB of indices) that cannot be allocated") from exc
        bar = tqdm(range(n_steps), desc=f"LLSH training {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
                   leave=False)
        for step in bar:
            idx = pairs[step * batch:(step + 1) * batch]
            x_q = features[torch.from_numpy(idx[:, 0])].to(device)
            x_k = features[torch.from_numpy(idx[:, 1])].to(device)
            z_q = F.normalize(encoder(x_q).flatten(1), dim=1)
            with torch.no_grad():
                for p_q, p_k in zip(encoder.parameters(), key_encoder.parameters()):
                    p_k.mul_(cfg.momentum).add_(p_q.detach(), alpha=1.0 - cfg.momentum)
                z_k = F.normalize(key_encoder(x_k).flatten(1), dim=1)
            l_pos = (z_q * z_k).sum(dim=1, keepdim=True)
            l_neg = z_q @ queue.T
            logits = torch.cat([l_pos, l_neg], dim=1) / cfg.temperature
            loss = F.cross_entropy(logits, torch.zeros(len(idx), dtype=torch.long, device=device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if mean_dir is not None:
                with torch.no_grad():
                    g = encoder.weight.grad
                    g.sub_(torch.outer(g @ mean_dir, mean_dir))
            if pcs is not None:
                with torch.no_grad():
                    g = encoder.weight.grad
                    g.sub_((g @ pcs.T) @ pcs)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(encoder.parameters(), cfg.grad_clip)
            lr = lr_at(log.steps, total_steps, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            with torch.no_grad():  # FIFO queue; a batch longer than the queue keeps its last keys
                m = min(len(idx), cfg.queue_size)  # (unique positions: duplicates have no set winner on a GPU)
                pos = (ptr + torch.arange(len(idx) - m, len(idx), device=device)) % cfg.queue_size
                queue[pos] = z_k[len(idx) - m:]
                ptr = (ptr + len(idx)) % cfg.queue_size
            log.losses.append(float(loss.detach()))
            log.lrs.append(lr)
            log.steps += 1
            bar.set_postfix(loss=f"{log.losses[-1]:.4f}")
        bar.close()
    encoder.eval()
    encoder.weight.grad = None  # a (b*r, d) buffer that scoring never reads (d 9216: 9 MiB at b 8, r 32)
    return log
