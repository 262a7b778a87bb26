"""The hash encoder of the paper: LayerNorm without affine, then b parallel Linear(d, r) + sigmoid.

The b hash layers are stored as one (b*r, d) weight so hashing is a single GEMM.  Each block of
r rows is initialised Xavier-uniform exactly as nn.Linear(d, r) would be in the authors' code
(bound sqrt(6 / (d + r))); untrained layers are plain LSH (random hyperplanes through the mean).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import _C


# Row count below which a batch is padded before its GEMM: BLAS takes other kernels for a handful of
# rows (gemv for one), whose rounding differs, and a row's code must not depend on its batch.
MIN_GEMM_ROWS = 16
# Likewise for the GEMM's output columns (b * r): with 1, 2, 4 or 8 of them MKL's rounding depended on
# the number of rows, so the CPU GEMM takes zero weight rows up to this many (n_tables * n_bits < 16).
MIN_GEMM_COLS = 16


def pad_gemm_weight(weight: torch.Tensor) -> torch.Tensor:
    """The (b*r, d) weight with zero rows appended up to MIN_GEMM_COLS (the same weight when wider)."""
    n = weight.shape[0]
    return weight if n >= MIN_GEMM_COLS else torch.cat([weight, weight.new_zeros(MIN_GEMM_COLS - n, weight.shape[1])])


def pad_to_gemm_rows(x: torch.Tensor) -> torch.Tensor:
    """x with rows appended, repeats of its first, up to MIN_GEMM_ROWS (a row's GEMM output does not
    depend on the others; zero rows would be flat rows, which take the explicit LayerNorm's second GEMM)."""
    n = x.shape[0]
    return x if n >= MIN_GEMM_ROWS else torch.cat([x, x[:1].expand(MIN_GEMM_ROWS - n, x.shape[1])])


def float32_rows(x: torch.Tensor) -> torch.Tensor:
    """x as the float32 rows the hash layers take.

    float64 rows whose mean lies far from 0 against their spread (|mu| > FOLD_MAX_MEAN_RATIO * sigma)
    and whose values float32 cannot hold exactly lose that mean in float64 first: LayerNorm ignores a
    row's offset, and a cast first would keep only float32's ~7 digits of offset plus variation
    (offsets of 1e5 changed 3.6% of the keys, 1e7 92%).  Every other row is cast as it is, bit for
    bit: float64 copies of float32 data hash exactly as the float32 data does, and a value beyond
    float32's range stays one (refused by the caller, as documented).
    """
    if x.dtype != torch.float64:
        return x.to(torch.float32)
    std, mean = torch.std_mean(x, dim=1, correction=0, keepdim=True)
    far = mean.abs() > HashEncoder.FOLD_MAX_MEAN_RATIO * std  # NaN rows: False, cast and refused as before
    if not bool(far.any()):
        return x.to(torch.float32)
    cast = x.to(torch.float32)
    lossy = (cast.to(torch.float64) != x).any(dim=1, keepdim=True)
    in_range = (x.abs() <= float(torch.finfo(torch.float32).max)).all(dim=1, keepdim=True)
    centre = far & lossy & in_range
    return torch.where(centre, (x - mean).to(torch.float32), cast) if bool(centre.any()) else cast


class HashEncoder(nn.Module):
    """x (M, d) -> real-valued codes (M, n_tables, n_bits) in (0, 1)."""

    def __init__(self, dim: int, n_tables: int = 8, n_bits: int = 32, seed: int = 0):
        super().__init__()
        self.dim, self.n_tables, self.n_bits = int(dim), int(n_tables), int(n_bits)
        weight = torch.empty(self.n_tables * self.n_bits, self.dim)
        gen = torch.Generator().manual_seed(int(seed))
        bound = math.sqrt(6.0 / (self.dim + self.n_bits))  # xavier_uniform_ of one Linear(d, r)
        with torch.no_grad():
            weight.uniform_(-bound, bound, generator=gen)
        self.weight = nn.Parameter(weight)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, (self.dim,))  # LayerNorm without affine, eps 1e-5 as in nn.LayerNorm
        return F.linear(x, self.weight)  # (M, b*r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x)).view(-1, self.n_tables, self.n_bits)

    def _explicit_logits(self, rows: torch.Tensor) -> torch.Tensor:
        """logits() of the rows the fold leaves out, padded (by repeating the first) to MIN_GEMM_ROWS:
        BLAS rounds a one-row product (gemv) differently, so a far row's code would otherwise depend on
        how many far rows share its batch."""
        x = F.layer_norm(pad_to_gemm_rows(rows), (self.dim,))
        return F.linear(x, pad_gemm_weight(self.weight))[:rows.shape[0], :self.weight.shape[0]]

    @torch.no_grad()
    def hash_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (M, b, r) for indexing and scoring, with the LayerNorm folded into the GEMM epilogue.

        The engine applies the sigmoid fused with binarize (_engine.sigmoid_binarize), or on the CPU
        the whole epilogue at once (hash_codes_cpu).

        LN(x) W^T = (x W^T - mu * W 1) / sigma, so the normalised copy of x is never written: one
        read of x for (mu, sigma) and the GEMM itself, instead of LayerNorm's extra passes, which
        cost half a GEMM on a CPU.  The fold subtracts two large terms when |mu| >> sigma; rows with
        |mu| > FOLD_MAX_MEAN_RATIO * sigma take the explicit LayerNorm instead (a per-row choice, so
        a row's code never depends on the other rows of its batch).
        """
        if x.device.type == "cpu":  # the native epilogue reads CPU memory, whatever engine the tables use
            raw, mean, rstd, wsum = self._fold_inputs_cpu(x, 0)
            _C.hash_epilogue_cpu(raw.numpy(), mean, rstd, wsum, self.n_tables, False)
            return raw.view(-1, self.n_tables, self.n_bits)
        mean, rstd = (s.unsqueeze(1) for s in self._row_moments(x))
        logits = torch.addmm(mean * -self.weight.sum(dim=1), x, self.weight.t())
        logits.mul_(rstd)
        far = ((mean.abs() * rstd > self.FOLD_MAX_MEAN_RATIO) | (rstd > self.FLAT_ROW_RSTD)).flatten()
        if bool(far.any()):
            rows = torch.nonzero(far).flatten()
            logits[rows] = self._explicit_logits(x[rows])
        return logits.view(-1, self.n_tables, self.n_bits)

    @torch.no_grad()
    def hash_codes_cpu(self, x: torch.Tensor, n_threads: int = 0, table_codes=None, table_keys=None, row0: int = 0,
                       out=None):
        """CPU: x (M, d) float32 contiguous -> (codes (M, b, r), keys (M, b) uint64, first NaN row or -1).

        Bit for bit sigmoid(hash_logits(x)) and its keys, with the fold, the sigmoid and the keys in
        one native pass over the GEMM output (and the LayerNorm statistics in one read of x).
        table_codes (b, n_total, r) float32 / table_keys (b, n_total): also receive the rows at
        row0.. table-major, in the same pass (add()'s staging arrays).
        out: a float32 tensor of at least (M, b*r) for the GEMM output, which the codes returned are.
        """
        raw, mean, rstd, wsum = self._fold_inputs_cpu(x, n_threads, out)
        codes = raw.numpy()
        keys, bad = _C.hash_epilogue_cpu(codes, mean, rstd, wsum, self.n_tables, True, n_threads, table_codes,
                                         table_keys, row0)
        return codes.reshape(-1, self.n_tables, self.n_bits), keys, bad

    @staticmethod
    def _row_moments(x: torch.Tensor):
        """(mean (M,), 1 / sqrt(var + eps) (M,)) of the rows on a GPU: LayerNorm's statistics for the fold.

        var = E[x^2] - mu^2 from two vectorised reductions (torch's var_mean, a Welford pass, is
        slower); the cancellation is bounded by the |mu| / sigma cut-off.  The CPU takes the native
        _C.row_moments_cpu instead (one read of x, no cancellation, 2/3 of these two passes' time).
        """
        mean = x.mean(dim=1)
        var = (torch.linalg.vector_norm(x, dim=1).square_().div_(x.shape[1]) - mean * mean).clamp_(min=0.0)
        rstd = torch.rsqrt(var + 1e-5)
        # A finite row whose float32 sum of squares overflows would get var = inf, rstd = 0 and all-zero
        # logits (a silent score): NaN statistics instead, so its logits are NaN and the caller rejects
        # the row, as the CPU's row_moments_cpu does.
        bad = ~torch.isfinite(var)
        return mean.masked_fill(bad, float("nan")), rstd.masked_fill_(bad, float("nan"))

    def _fold_inputs_cpu(self, x: torch.Tensor, n_threads: int, out=None):
        """(x W^T - mu W 1, zeros, rstd, W 1) for the native epilogue; far rows already hold their logits.

        The statistics come from one native read of x (_C.row_moments_cpu: NaN for a row with a
        NaN/Inf, so its logits are NaN and the caller rejects the row).

        The -mu W 1 term enters as addmm's bias, the GEMM call of the torch path above (and its
        memory behaviour: other call forms make MKL/oneDNN keep MBs of buffers between calls), so
        the epilogue's fold only scales: (raw - 0 * wsum) * rstd.
        """
        x = x.to(torch.float32).contiguous()
        mean, rstd = _C.row_moments_cpu(x.numpy(), 1e-5, n_threads)
        wsum = self.weight.sum(dim=1)
        with np.errstate(over="ignore", invalid="ignore"):
            far = (np.abs(mean) * rstd > self.FOLD_MAX_MEAN_RATIO) | (rstd > self.FLAT_ROW_RSTD)  # NaN: stays
        # in place into the bias (the same addmm kernel, bit for bit): no second (M, b*r) array to fault in
        # and copy the bias into (~4% of the GEMM's time at M = 20,000)
        width = wsum.shape[0]
        if width < MIN_GEMM_COLS:  # narrow layers: a GEMM of MIN_GEMM_COLS columns, the first `width` kept
            raw = torch.mul(torch.from_numpy(mean).unsqueeze(1), -F.pad(wsum, (0, MIN_GEMM_COLS - width)))
            raw = raw.addmm_(x, pad_gemm_weight(self.weight).t())[:, :width]
            raw = raw.contiguous() if out is None else out[:x.shape[0]].copy_(raw)
        else:
            out = torch.empty((x.shape[0], width)) if out is None else out[:x.shape[0]]
            raw = torch.mul(torch.from_numpy(mean).unsqueeze(1), -wsum, out=out).addmm_(x, self.weight.t())
        if far.any():
            rows = torch.from_numpy(np.flatnonzero(far))
            raw[rows] = self._explicit_logits(x[rows])
            rstd[far] = 1.0  # (raw - 0 * wsum) * 1 == raw: the epilogue keeps these logits
        return raw, np.zeros_like(mean), rstd, wsum.numpy()

    FOLD_MAX_MEAN_RATIO = 4.0
    # Rows with variance under 1e-8 (rstd above 1 / sqrt(1e-8 + eps)) also take the explicit
    # LayerNorm: a constant row normalises to exactly 0, so every logit is exactly 0 and every bit
    # sits on the sigmoid >= 0.5 edge, where the fold's float32 rounding noise (amplified by rstd
    # ~ 316) set arbitrary bits; the explicit path gives the exact 0 and all ones, as the oracle.
    FLAT_ROW_RSTD = float(1.0 / np.sqrt(1e-8 + 1e-5))
