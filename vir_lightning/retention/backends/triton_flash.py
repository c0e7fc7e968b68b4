"""The ``"triton"`` backend: retention as one fused, flash-style Triton kernel, forward and backward.

For each tile of queries the kernel walks the key tiles its mask can reach, builds the decay of every
(query, key) pair from their grid coordinates and accumulates

    O[i] = Σ_j s·γ^(|x_i − x_j| + |y_i − y_j|)·[pair visible] (q_i · k_j) v_j

in float32, without ever storing anything of size N². Everything is the same kernel:

- 2D decay on an R×C patch grid: a query tile is a TH×TW block of the grid, so for the upper-left
  quadrant (directions 1) only key tiles up and to the left are visited — about a quarter of the
  pairs of full attention — and for directions 2 the two quadrants, for 4 every tile.
- The class token is the one token of an extra grid row R, at x = C − 1: the coordinates give it
  exactly the weights the method defines (it sees every patch with γ^((C−1−x)+(R−y)), none sees it).
- 1D causal decay γ^(i−j) is the upper-left quadrant of a 1×N grid.
- Ragged grids: tokens outside the grid are masked on load and never stored.

The gradients are retentions of the same kind with the operands permuted (``autograd.py``):
dq = ret(D; dO, v, k), dk = ret(Dᵀ; v, dO, q), dv = ret(Dᵀ; k, q, dO), and Dᵀ of the quadrant is the
lower-right quadrant over the same coordinates (class token included); the 2- and 4-direction masks
are symmetric. So the backward pass is three launches of the forward kernel, and only q, k, v are
saved. Inputs bf16, fp16 or fp32, any strides; accumulation and decays in fp32; fp32 products
follow ``torch.backends.cuda.matmul.allow_tf32`` (off by default: IEEE fp32, exact to rounding).

The op is registered with ``torch.library.triton_op``, so ``torch.compile`` traces it (no graph
break) and autocast leaves its inputs alone. On the CPU it runs under ``TRITON_INTERPRET=1`` only (the
tests); there ``tl.dot`` on bf16 is wrong, so bf16 operands are cast to fp32 before each product.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from . import triton_interpreted as interpreted

#: Which (query, key) pairs a mask keeps, with Δ = query − key: the quadrant (Δx ≥ 0 and Δy ≥ 0), its
#: transpose, both (directions 2) or all (directions 4).
UPPER_LEFT, LOWER_RIGHT, BOTH_QUADRANTS, ALL_PAIRS = 0, 1, 2, 3
_TRANSPOSED = {UPPER_LEFT: LOWER_RIGHT, LOWER_RIGHT: UPPER_LEFT, BOTH_QUADRANTS: BOTH_QUADRANTS, ALL_PAIRS: ALL_PAIRS}
_MASK_OF_DIRECTIONS = {1: UPPER_LEFT, 2: BOTH_QUADRANTS, 4: ALL_PAIRS}

#: Tokens per query and per key tile. 2D tiles are TILE_TOKENS // TW rows of TW columns (TW: up to
#: TILE_COLS_2D, no wider than the grid rounded up to a power of two); 1D tiles are 1×TILE_TOKENS.
TILE_TOKENS = 64
TILE_COLS_2D = 8


@triton.jit
def _tile_tokens(tile_y, tile_x, rows, cols, HAS_CLS: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr):
    """(y, x, valid, token index) of the TH·TW places of grid tile (tile_y, tile_x): the grid's tokens
    in raster order, and the class token alone in row R at column C−1."""
    offs = tl.arange(0, TH * TW)
    y = tile_y * TH + offs // TW
    x = tile_x * TW + offs % TW
    valid = ((y < rows) & (x < cols)) | (HAS_CLS & (y == rows) & (x == cols - 1))
    return y, x, valid, tl.where(y < rows, y * cols + x, rows * cols)


@triton.jit
def _load_rows(base, tokens, valid, stride_t, stride_d, dim, BLOCK_D: tl.constexpr):
    """The (tokens, BLOCK_D) rows of one (batch, head), zero where a token is not valid or past ``dim``."""
    offs = tl.arange(0, BLOCK_D)
    return tl.load(
        base + tokens[:, None] * stride_t + offs[None, :] * stride_d,
        mask=valid[:, None] & (offs[None, :] < dim),
        other=0.0,
    )


@triton.jit
def _visit_key_tile(
    acc,
    q,
    q_y,
    q_x,
    k_base,
    v_base,
    stride_kt,
    stride_kd,
    stride_vt,
    stride_vd,
    log_gamma,
    scale,
    rows,
    cols,
    HAS_CLS: tl.constexpr,
    ky,
    kx,
    dk,
    dv,
    MASK: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """acc += (s·q kᵀ ⊙ D) v over the key tile (ky, kx): D from the coordinates, masked to ``MASK``."""
    k_y, k_x, k_ok, k_tok = _tile_tokens(ky, kx, rows, cols, HAS_CLS, KH, KW)
    k = _load_rows(k_base, k_tok, k_ok, stride_kt, stride_kd, dk, BLOCK_DK)
    v = _load_rows(v_base, k_tok, k_ok, stride_vt, stride_vd, dv, BLOCK_DV)
    d_y = q_y[:, None] - k_y[None, :]
    d_x = q_x[:, None] - k_x[None, :]
    if MASK == 0:
        visible = (d_x >= 0) & (d_y >= 0)
    elif MASK == 1:
        visible = (d_x <= 0) & (d_y <= 0)
    elif MASK == 2:
        visible = ((d_x >= 0) & (d_y >= 0)) | ((d_x <= 0) & (d_y <= 0))
    else:
        visible = d_x == d_x
    distance = (tl.abs(d_x) + tl.abs(d_y)).to(tl.float32)
    decay = tl.where(visible & k_ok[None, :], tl.exp(distance * log_gamma) * scale, 0.0)
    if DOT_FP32:
        scores = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision=PRECISION)
        acc += tl.dot(scores * decay, v.to(tl.float32), input_precision=PRECISION)
    else:
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        acc += tl.dot((scores * decay).to(v.dtype), v, input_precision=PRECISION)
    return acc


@triton.jit
def _visit_rectangle(
    acc,
    q,
    q_y,
    q_x,
    k_base,
    v_base,
    stride_kt,
    stride_kd,
    stride_vt,
    stride_vd,
    log_gamma,
    scale,
    rows,
    cols,
    dk,
    dv,
    ky0,
    ky1,
    kx0,
    kx1,
    skip_y,
    skip_x,
    HAS_CLS: tl.constexpr,
    MASK: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Every key tile of [ky0, ky1) × [kx0, kx1) except those of [0, skip_y) × [0, skip_x)."""
    for ky in range(ky0, ky1):
        for kx in range(kx0, kx1):
            if (ky >= skip_y) | (kx >= skip_x):  # not a tile the other rectangle visited
                acc = _visit_key_tile(
                    acc,
                    q,
                    q_y,
                    q_x,
                    k_base,
                    v_base,
                    stride_kt,
                    stride_kd,
                    stride_vt,
                    stride_vd,
                    log_gamma,
                    scale,
                    rows,
                    cols,
                    HAS_CLS,
                    ky,
                    kx,
                    dk,
                    dv,
                    MASK,
                    KH,
                    KW,
                    BLOCK_DK,
                    BLOCK_DV,
                    DOT_FP32,
                    PRECISION,
                )
    return acc


@triton.jit
def _retention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    log_gamma_ptr,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_od,
    heads,
    rows,
    cols,
    dk,
    dv,
    scale,
    HAS_CLS: tl.constexpr,
    MASK: tl.constexpr,
    TH: tl.constexpr,
    TW: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program: one TH×TW query tile of one (batch, head). Grid: (query tiles, batch·heads)."""
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = bh % heads
    tiles_x = tl.cdiv(cols, TW)
    ty = tile // tiles_x
    tx = tile % tiles_x
    q_y, q_x, q_ok, q_tok = _tile_tokens(ty, tx, rows, cols, HAS_CLS, TH, TW)
    q = _load_rows(q_ptr + b * stride_qb + h * stride_qh, q_tok, q_ok, stride_qt, stride_qd, dk, BLOCK_DK)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    log_gamma = tl.load(log_gamma_ptr + h).to(tl.float32)
    acc = tl.zeros((TH * TW, BLOCK_DV), dtype=tl.float32)

    # Key tiles in tile units. The last tile row of the grid plus the class token's row: R + has_cls rows.
    key_rows = rows + HAS_CLS
    tiles_y = tl.cdiv(key_rows, TH)
    # This query tile's extent, clipped to its valid tokens (a tile of the class token's row that
    # does not hold it has none: its loops are empty).
    any_q = tl.max(q_ok.to(tl.int32), axis=0)
    y_lo = ty * TH
    x_lo = tx * TW
    y_hi = tl.minimum(y_lo + TH, key_rows) - 1
    x_hi = tl.minimum(x_lo + TW, cols) - 1
    # Every mask visits at most two rectangles of key tiles: the upper-left one [0, up_y) × [0, up_x)
    # and the lower-right one [ty, end_y) × [tx, tiles_x); directions 2 visits both, skipping in the
    # second the tiles the first covered.
    up_y = tl.where(any_q > 0, y_hi // TH + 1, 0)
    up_x = x_hi // TW + 1
    end_y = tl.where(any_q > 0, tiles_y, 0)
    if MASK == 1:
        ky0, ky1, kx0, kx1 = ty, end_y, tx, tiles_x
    elif MASK == 3:
        ky0, ky1, kx0, kx1 = 0, end_y, 0, tiles_x
    else:  # the upper-left quadrant: alone (directions 1) or the first of two (directions 2)
        ky0, ky1, kx0, kx1 = 0, up_y, 0, up_x
    acc = _visit_rectangle(
        acc,
        q,
        q_y,
        q_x,
        k_base,
        v_base,
        stride_kt,
        stride_kd,
        stride_vt,
        stride_vd,
        log_gamma,
        scale,
        rows,
        cols,
        dk,
        dv,
        ky0,
        ky1,
        kx0,
        kx1,
        0,
        0,
        HAS_CLS,
        MASK,
        TH,
        TW,
        BLOCK_DK,
        BLOCK_DV,
        DOT_FP32,
        PRECISION,
    )
    if MASK == 2:
        acc = _visit_rectangle(
            acc,
            q,
            q_y,
            q_x,
            k_base,
            v_base,
            stride_kt,
            stride_kd,
            stride_vt,
            stride_vd,
            log_gamma,
            scale,
            rows,
            cols,
            dk,
            dv,
            ty,
            end_y,
            tx,
            tiles_x,
            up_y,
            up_x,
            HAS_CLS,
            MASK,
            TH,
            TW,
            BLOCK_DK,
            BLOCK_DV,
            DOT_FP32,
            PRECISION,
        )

    offs_dv = tl.arange(0, BLOCK_DV)
    o_ptrs = o_ptr + b * stride_ob + h * stride_oh + q_tok[:, None] * stride_ot + offs_dv[None, :] * stride_od
    tl.store(o_ptrs, acc.to(o_ptr.dtype.element_ty), mask=q_ok[:, None] & (offs_dv[None, :] < dv))


def tile_shape(rows: int, cols: int) -> tuple[int, int]:
    """(TH, TW) of the query and key tiles: 1×TILE_TOKENS for a single row (1D), else TW columns of
    up to TILE_COLS_2D and as many rows as make TILE_TOKENS tokens (powers of two: ``tl.arange``)."""
    if rows == 1:
        return 1, TILE_TOKENS
    width = min(TILE_COLS_2D, triton.next_power_of_2(cols))
    return TILE_TOKENS // width, width


@torch.library.triton_op("vir_lightning::fused_retention", mutates_args={})
def fused_retention(
    q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor, rows: int, cols: int, has_cls: int, mask: int, scale: float
) -> Tensor:
    """Retention of (B, H, N, ·) q, k, v over an R×C grid (+ class token) with ``mask``; (B, H, N, dv).

    ``log_gamma``: (H,) float32 on the inputs' device. The output is a (B, N, H, dv) buffer seen as
    (B, H, N, dv), so merging the heads afterwards is free.
    """
    batch, heads, tokens, dk = q.shape
    dv = v.shape[-1]
    out = q.new_empty(batch, tokens, heads, dv).transpose(1, 2)
    th, tw = tile_shape(rows + has_cls, cols)
    tiles = triton.cdiv(rows + has_cls, th) * triton.cdiv(cols, tw)
    if interpreted() and is_fake(q):
        # Tracing (torch.compile) in the CPU interpreter: wrap_triton cannot see an interpreted kernel,
        # so only the output's shape is made; on CUDA the launch below is traced as it is.
        return out
    dot_fp32 = q.dtype == torch.bfloat16 and interpreted()
    precision = "ieee" if q.dtype != torch.float32 or not torch.backends.cuda.matmul.allow_tf32 else "tf32"
    torch.library.wrap_triton(_retention_kernel)[(tiles, batch * heads)](
        q,
        k,
        v,
        out,
        log_gamma,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        heads,
        rows,
        cols,
        dk,
        dv,
        scale,
        HAS_CLS=bool(has_cls),
        MASK=mask,
        TH=th,
        TW=tw,
        BLOCK_DK=max(16, triton.next_power_of_2(dk)),
        BLOCK_DV=max(16, triton.next_power_of_2(dv)),
        DOT_FP32=dot_fp32,
        PRECISION=precision,
    )
    return out


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, log_gamma, rows, cols, has_cls, mask, scale = inputs
    ctx.save_for_backward(q, k, v, log_gamma)
    ctx.grid = (rows, cols, has_cls)
    ctx.mask, ctx.scale = mask, scale


def _backward(ctx, d_out: Tensor):
    q, k, v, log_gamma = ctx.saved_tensors
    grid, mask, scale = ctx.grid, ctx.mask, ctx.scale
    transposed = _TRANSPOSED[mask]
    need_q, need_k, need_v = ctx.needs_input_grad[:3]
    dq = fused_retention(d_out, v, k, log_gamma, *grid, mask, scale) if need_q else None
    dk = fused_retention(v, d_out, q, log_gamma, *grid, transposed, scale) if need_k else None
    dv = fused_retention(k, q, d_out, log_gamma, *grid, transposed, scale) if need_v else None
    return dq, dk, dv, None, None, None, None, None, None


fused_retention.register_autograd(_backward, setup_context=_setup_context)


def retention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_gamma: Tensor,
    scale: float,
    grid_shape: tuple[int, int] | None,
    class_token: bool,
    directions: int,
) -> Tensor:
    """The backend's entry, for arguments the public op has validated: 1D when ``grid_shape`` is None."""
    rows, cols = (1, q.shape[2]) if grid_shape is None else grid_shape
    return fused_retention(
        q, k, v, log_gamma.float(), rows, cols, int(class_token), _MASK_OF_DIRECTIONS[directions], scale
    )
