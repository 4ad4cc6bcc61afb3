"""Triton kernels for batch norm fused with a residual add and an activation.

Every tensor is seen as (N, C, S) through its strides (sN, sC, sS), so NCHW (sS = 1) and channels_last (sC = 1)
take the same code; a program works on a tile of BLOCK_C channels × BLOCK_M of the M = N·S values per channel.
Offsets are int64; arithmetic is float32 whatever the element type; flags are ``tl.constexpr`` so each
combination compiles to straight-line code.

Two ways through a training step, chosen per shape by ``bnlab.kernels.triton.plan``:

- ``ONE_PASS``: when a channel block's M values fit in registers, one program per channel block reads them once,
  takes the statistics (two-pass, on chip) and writes y: one read and one write of x's bytes;
- split: ``_stats_partial`` gives each (channel block, split) program a range of M and writes (count, mean, M2)
  per channel; ``_stats_merge`` merges the splits in order with Chan's formula (deterministic: no atomics);
  ``_normalize`` writes y. The backward mirrors it (``_grad_partial``, ``_grad_merge``, ``_grad_input``).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _offsets(c, m, S, sN, sC, sS):
    # c: (BLOCK_C,) channels, m: (BLOCK_M,) flat indices n·S + s  ->  (BLOCK_C, BLOCK_M) int64 element offsets
    m64 = m.to(tl.int64)
    n = m64 // S
    s = m64 - n * S
    return c.to(tl.int64)[:, None] * sC + (n * sN + s * sS)[None, :]


@triton.jit
def _log1p(y):
    # log(1 + y) without losing the digits of a small y: Goldberg's correction log(u)·y/(u − 1), u = 1 + y.
    u = 1.0 + y
    safe = tl.where(u == 1.0, 1.0, u - 1.0)  # the unselected branch must not divide by zero either
    return tl.where(u == 1.0, y, tl.log(u) * y / safe)


@triton.jit
def _expm1(z):
    # exp(z) − 1 for small |z| too (Kahan's correction (u − 1)·z/log(u), u = eˣ).
    u = tl.exp(z)
    plain = (u == 1.0) | (u == 0.0)
    safe = tl.where(plain, 1.0, tl.log(u))
    return tl.where(u == 1.0, z, tl.where(u == 0.0, -1.0, (u - 1.0) * z / safe))


@triton.jit
def _activate(z, slope, ACT: tl.constexpr):
    # ACT: the activation's index in bnlab.reference.fused.ACTIVATIONS (identity, relu, leaky_relu, silu, elu).
    if ACT == 1:
        z = tl.maximum(z, 0.0)
    elif ACT == 2:
        z = tl.where(z > 0, z, z * slope)
    elif ACT == 3:
        z = z / (1.0 + tl.exp(-z))
    elif ACT == 4:
        z = tl.where(z > 0, z, _expm1(tl.minimum(z, 0.0)))
    return z


@triton.jit
def _dz_xhat(g, src, r, mean, invstd, gamma, beta, slope, ACT: tl.constexpr, FROM_OUTPUT: tl.constexpr):
    # dz = ∂ℓ/∂z and x̂ for z = γx̂ + β + r; src is x, or y when FROM_OUTPUT (then z = act⁻¹(y)).
    if FROM_OUTPUT:
        if ACT == 2:
            z = tl.where(src > 0, src, src / slope)
            grad = tl.where(src > 0, 1.0, slope)
        elif ACT == 4:
            z = tl.where(src > 0, src, _log1p(tl.minimum(src, 0.0)))
            grad = tl.where(src > 0, 1.0, src + 1.0)
        else:
            z = src
            grad = tl.full(src.shape, 1.0, tl.float32)
        xhat = (z - beta - r) / gamma
        dz = g * grad
    else:
        xhat = (src - mean) * invstd
        if ACT == 0:
            dz = g
        else:
            z = xhat * gamma + beta + r
            if ACT == 1:
                dz = tl.where(z > 0, g, 0.0)
            elif ACT == 2:
                dz = tl.where(z > 0, g, g * slope)
            elif ACT == 3:
                sig = 1.0 / (1.0 + tl.exp(-z))
                dz = g * sig * (1.0 + z * (1.0 - sig))
            else:
                dz = tl.where(z > 0, g, g * tl.exp(tl.minimum(z, 0.0)))
    return dz, xhat


@triton.jit
def _params(w_ptr, b_ptr, c, cmask, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    # Statement ifs on purpose: a constexpr branch that is not taken is not compiled (no load of a dummy pointer).
    if HAS_W:  # noqa: SIM108
        gamma = tl.load(w_ptr + c, mask=cmask, other=1.0).to(tl.float32)
    else:
        gamma = tl.full(c.shape, 1.0, tl.float32)
    if HAS_B:  # noqa: SIM108
        beta = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    else:
        beta = tl.full(c.shape, 0.0, tl.float32)
    return gamma, beta


# ------------------------------------------------------------------------------------------------ forward
@triton.jit
def _smallest(out, mask, lo_ptr, index):
    # The smallest output of a tile (masked lanes left out), for save="output" to see how near ELU's saturation at
    # −1 it came without reading y again; one slot per program, so no atomics.
    tl.store(lo_ptr + index, tl.min(tl.min(tl.where(mask, out, float("inf")), axis=1), axis=0))


@triton.jit
def _forward_one_pass(x_ptr, r_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, var_ptr, lo_ptr,
                      C, S, M, sN, sC, sS, eps, slope,
                      ACT: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                      SMALLEST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
    # x_ptr, r_ptr, y_ptr: (N, C, S) through (sN, sC, sS); w_ptr, b_ptr, mean_ptr, invstd_ptr, var_ptr: (C,) fp32;
    # lo_ptr: (programs,) fp32, the smallest output per program (SMALLEST only).
    # One program holds all M values of BLOCK_C channels (BLOCK_M >= M): x is read once.
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    m = tl.arange(0, BLOCK_M)
    cmask, mmask = c < C, m < M
    mask = cmask[:, None] & mmask[None, :]
    offs = _offsets(c, m, S, sN, sC, sS)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / M
    d = tl.where(mask, x - mean[:, None], 0.0)
    # Two passes over registers (never E[x²] − E[x]²); the deviations' sum corrects the first mean, which float32
    # rounds to the resolution of the mean's magnitude when it dwarfs the spread.
    dsum = tl.sum(d, axis=1)
    var = tl.maximum(tl.sum(d * d, axis=1) - dsum * dsum / M, 0.0) / M
    mean += dsum / M
    d -= (dsum / M)[:, None]
    invstd = 1.0 / tl.sqrt(var + eps)
    tl.store(mean_ptr + c, mean, mask=cmask)
    tl.store(invstd_ptr + c, invstd, mask=cmask)
    tl.store(var_ptr + c, var, mask=cmask)
    gamma, beta = _params(w_ptr, b_ptr, c, cmask, HAS_W, HAS_B)
    z = d * (invstd * gamma)[:, None] + beta[:, None]
    if HAS_RES:
        z += tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = _activate(z, slope, ACT)
    if SMALLEST:
        _smallest(out, mask, lo_ptr, tl.program_id(0))
    tl.store(y_ptr + offs, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _stats_partial(x_ptr, cnt_ptr, mean_ptr, m2_ptr, C, S, M, sN, sC, sS, m_per_split,
                   BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
    # x_ptr: (N, C, S); cnt_ptr: (splits,), mean_ptr, m2_ptr: (splits, C) fp32 partial moments of one split.
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1).to(tl.int64)
    cmask = c < C
    # Moments are taken of x − K, K = the channel's first value: merging float32 means of magnitude |μ| would
    # lose the spread wherever |μ| dwarfs it; x − K is of the spread's size.
    shift = tl.load(x_ptr + c.to(tl.int64) * sC, mask=cmask, other=0.0).to(tl.float32)
    start = split * m_per_split
    end = tl.minimum(start + m_per_split, M)
    count = 0.0
    mean = tl.zeros((BLOCK_C,), tl.float32)
    m2 = tl.zeros((BLOCK_C,), tl.float32)
    for m0 in range(start, end, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        mmask = m < end
        mask = cmask[:, None] & mmask[None, :]
        offs = _offsets(c, m, S, sN, sC, sS)
        # Masked lanes must be 0 after the shift, not 0 − K: each would add −K to the tile's sum and K² to its
        # squares, which the dsum correction below only partly undoes (the variance cancels catastrophically).
        x = tl.where(mask, tl.load(x_ptr + offs, mask=mask).to(tl.float32) - shift[:, None], 0.0)
        n_b = tl.sum(mmask.to(tl.float32), axis=0)
        mean_b = tl.sum(x, axis=1) / n_b
        d = tl.where(mask, x - mean_b[:, None], 0.0)
        dsum = tl.sum(d, axis=1)  # corrects the float32 rounding of mean_b, as in _forward_one_pass
        m2_b = tl.maximum(tl.sum(d * d, axis=1) - dsum * dsum / n_b, 0.0)
        mean_b += dsum / n_b
        # Chan et al.: merge the tile's (n_b, mean_b, M2_b) into the running (count, mean, M2).
        total = count + n_b
        delta = mean_b - mean
        mean += delta * (n_b / total)
        m2 += m2_b + delta * delta * (count * n_b / total)
        count = total
    tl.store(mean_ptr + split * C + c, mean, mask=cmask)
    tl.store(m2_ptr + split * C + c, m2, mask=cmask)
    if tl.program_id(0) == 0:
        tl.store(cnt_ptr + split, count)


@triton.jit
def _stats_merge(x_ptr, cnt_ptr, pmean_ptr, pm2_ptr, mean_ptr, invstd_ptr, var_ptr, C, sC, splits, eps,
                 BLOCK_C: tl.constexpr):
    # x_ptr: (N, C, S), read for the shift K only; cnt_ptr: (splits,); pmean_ptr (means of x − K), pm2_ptr:
    # (splits, C); mean_ptr, invstd_ptr, var_ptr: (C,) fp32 outputs.
    # Splits are merged in index order: the same rounding on every run.
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    shift = tl.load(x_ptr + c.to(tl.int64) * sC, mask=cmask, other=0.0).to(tl.float32)
    count = 0.0
    mean = tl.zeros((BLOCK_C,), tl.float32)
    m2 = tl.zeros((BLOCK_C,), tl.float32)
    for i in range(0, splits):
        n_b = tl.load(cnt_ptr + i)
        mean_b = tl.load(pmean_ptr + i * C + c, mask=cmask, other=0.0)
        m2_b = tl.load(pm2_ptr + i * C + c, mask=cmask, other=0.0)
        total = count + n_b
        delta = mean_b - mean
        mean += delta * (n_b / total)
        m2 += m2_b + delta * delta * (count * n_b / total)
        count = total
    var = m2 / count
    tl.store(mean_ptr + c, shift + mean, mask=cmask)
    tl.store(var_ptr + c, var, mask=cmask)
    tl.store(invstd_ptr + c, 1.0 / tl.sqrt(var + eps), mask=cmask)


@triton.jit
def _normalize(x_ptr, r_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, lo_ptr, C, S, M, sN, sC, sS, slope,
               ACT: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
               SMALLEST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
    # x_ptr, r_ptr, y_ptr: (N, C, S); w_ptr, b_ptr, mean_ptr, invstd_ptr: (C,) fp32; lo_ptr: (programs,) fp32, the
    # smallest output per program (SMALLEST only). y = act((x − μ)·scale + β + r): the elemt phase.
    # The M tiles on grid axis 0, the channel blocks on axis 1 (CUDA allows far more programs on axis 0).
    m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    mask = cmask[:, None] & (m < M)[None, :]
    offs = _offsets(c, m, S, sN, sC, sS)
    gamma, beta = _params(w_ptr, b_ptr, c, cmask, HAS_W, HAS_B)
    mean = tl.load(mean_ptr + c, mask=cmask, other=0.0)
    scale = tl.load(invstd_ptr + c, mask=cmask, other=0.0) * gamma
    # (x − μ)·scale + β rather than x·scale + (β − μ·scale): no cancellation when |μ| dwarfs the spread.
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = (x - mean[:, None]) * scale[:, None] + beta[:, None]
    if HAS_RES:
        z += tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = _activate(z, slope, ACT)
    if SMALLEST:
        _smallest(out, mask, lo_ptr, tl.program_id(0) * tl.num_programs(1) + tl.program_id(1))
    tl.store(y_ptr + offs, out.to(y_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------- backward
@triton.jit
def _channel_state(w_ptr, b_ptr, mean_ptr, invstd_ptr, c, cmask, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    # (BLOCK_C,) γ, β, μ and 1/σ of the channels c; γ is 1 on masked channels (save="output" divides by it).
    gamma, beta = _params(w_ptr, b_ptr, c, cmask, HAS_W, HAS_B)
    gamma = tl.where(cmask, gamma, 1.0)
    mean = tl.load(mean_ptr + c, mask=cmask, other=0.0)
    invstd = tl.load(invstd_ptr + c, mask=cmask, other=0.0)
    return gamma, beta, mean, invstd


@triton.jit
def _tile_dz_xhat(g_ptr, s_ptr, r_ptr, offs, mask, gamma, beta, mean, invstd, slope,
                  ACT: tl.constexpr, FROM_OUTPUT: tl.constexpr, HAS_RES: tl.constexpr):
    # One (BLOCK_C, BLOCK_M) tile of dz and x̂, both 0 on masked lanes so that they add nothing to a reduction.
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    src = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = 0.0
    if HAS_RES:
        r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dz, xhat = _dz_xhat(g, src, r, mean[:, None], invstd[:, None], gamma[:, None], beta[:, None], slope,
                        ACT, FROM_OUTPUT)
    return tl.where(mask, dz, 0.0), tl.where(mask, xhat, 0.0)


@triton.jit
def _store_dx(dx_ptr, dr_ptr, offs, mask, dz, xhat, gamma, invstd, dbias, dweight, count,
              WRITE_DRES: tl.constexpr):
    # ∂ℓ/∂x = γ/σ · (dz − Σdz/m − x̂·Σ(dz·x̂)/m) and, with a residual, ∂ℓ/∂r = dz; dbias = Σdz, dweight = Σdz·x̂,
    # m = count, the values the sums were taken over (this batch's M, or more in synchronized batch norm).
    dx = (gamma * invstd)[:, None] * (dz - (dbias / count)[:, None] - xhat * (dweight / count)[:, None])
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    if WRITE_DRES:
        tl.store(dr_ptr + offs, dz.to(dr_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_one_pass(g_ptr, s_ptr, r_ptr, dx_ptr, dr_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, dw_ptr, db_ptr,
                       C, S, M, sN, sC, sS, slope,
                       ACT: tl.constexpr, FROM_OUTPUT: tl.constexpr, HAS_RES: tl.constexpr,
                       WRITE_DRES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
    # g_ptr (∂ℓ/∂y), s_ptr (x or y), r_ptr, dx_ptr, dr_ptr: (N, C, S); w, b, mean, invstd, dw, db: (C,) fp32.
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    m = tl.arange(0, BLOCK_M)
    cmask = c < C
    mask = cmask[:, None] & (m < M)[None, :]
    offs = _offsets(c, m, S, sN, sC, sS)
    gamma, beta, mean, invstd = _channel_state(w_ptr, b_ptr, mean_ptr, invstd_ptr, c, cmask, HAS_W, HAS_B)
    dz, xhat = _tile_dz_xhat(g_ptr, s_ptr, r_ptr, offs, mask, gamma, beta, mean, invstd, slope,
                             ACT, FROM_OUTPUT, HAS_RES)
    dbias = tl.sum(dz, axis=1)
    dweight = tl.sum(dz * xhat, axis=1)
    tl.store(db_ptr + c, dbias, mask=cmask)
    tl.store(dw_ptr + c, dweight, mask=cmask)
    _store_dx(dx_ptr, dr_ptr, offs, mask, dz, xhat, gamma, invstd, dbias, dweight, M, WRITE_DRES)


@triton.jit
def _grad_partial(g_ptr, s_ptr, r_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, p1_ptr, p2_ptr,
                  C, S, M, sN, sC, sS, slope, m_per_split,
                  ACT: tl.constexpr, FROM_OUTPUT: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr,
                  HAS_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
    # g_ptr, s_ptr, r_ptr: (N, C, S); p1_ptr, p2_ptr: (splits, C) fp32 partial Σdz and Σdz·x̂ of one split.
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1).to(tl.int64)
    cmask = c < C
    gamma, beta, mean, invstd = _channel_state(w_ptr, b_ptr, mean_ptr, invstd_ptr, c, cmask, HAS_W, HAS_B)
    start = split * m_per_split
    end = tl.minimum(start + m_per_split, M)
    acc1 = tl.zeros((BLOCK_C,), tl.float32)
    acc2 = tl.zeros((BLOCK_C,), tl.float32)
    for m0 in range(start, end, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        mask = cmask[:, None] & (m < end)[None, :]
        dz, xhat = _tile_dz_xhat(g_ptr, s_ptr, r_ptr, _offsets(c, m, S, sN, sC, sS), mask, gamma, beta, mean,
                                 invstd, slope, ACT, FROM_OUTPUT, HAS_RES)
        acc1 += tl.sum(dz, axis=1)
        acc2 += tl.sum(dz * xhat, axis=1)
    tl.store(p1_ptr + split * C + c, acc1, mask=cmask)
    tl.store(p2_ptr + split * C + c, acc2, mask=cmask)


@triton.jit
def _grad_merge(p1_ptr, p2_ptr, dw_ptr, db_ptr, C, splits, BLOCK_C: tl.constexpr):
    # p1_ptr, p2_ptr: (splits, C); dw_ptr, db_ptr: (C,) fp32. Summed in split order: deterministic.
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    acc1 = tl.zeros((BLOCK_C,), tl.float32)
    acc2 = tl.zeros((BLOCK_C,), tl.float32)
    for i in range(0, splits):
        acc1 += tl.load(p1_ptr + i * C + c, mask=cmask, other=0.0)
        acc2 += tl.load(p2_ptr + i * C + c, mask=cmask, other=0.0)
    tl.store(db_ptr + c, acc1, mask=cmask)
    tl.store(dw_ptr + c, acc2, mask=cmask)


@triton.jit
def _grad_input(g_ptr, s_ptr, r_ptr, dx_ptr, dr_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, dw_ptr, db_ptr,
                C, S, M, sN, sC, sS, slope, count,
                ACT: tl.constexpr, FROM_OUTPUT: tl.constexpr, HAS_RES: tl.constexpr, WRITE_DRES: tl.constexpr,
                HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
    # As _backward_one_pass, for one (M tile, channel block) tile, with Σdz (db) and Σdz·x̂ (dw) already known
    # (the backward_elemt phase): they were summed over ``count`` values per channel.
    # The M tiles on grid axis 0, the channel blocks on axis 1 (CUDA allows far more programs on axis 0).
    m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    mask = cmask[:, None] & (m < M)[None, :]
    offs = _offsets(c, m, S, sN, sC, sS)
    gamma, beta, mean, invstd = _channel_state(w_ptr, b_ptr, mean_ptr, invstd_ptr, c, cmask, HAS_W, HAS_B)
    dz, xhat = _tile_dz_xhat(g_ptr, s_ptr, r_ptr, offs, mask, gamma, beta, mean, invstd, slope,
                             ACT, FROM_OUTPUT, HAS_RES)
    dbias = tl.load(db_ptr + c, mask=cmask, other=0.0)
    dweight = tl.load(dw_ptr + c, mask=cmask, other=0.0)
    _store_dx(dx_ptr, dr_ptr, offs, mask, dz, xhat, gamma, invstd, dbias, dweight, count, WRITE_DRES)
