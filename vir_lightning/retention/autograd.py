"""The lean backward of chunkwise retention: save q, k, v only, recompute everything else.

Through plain autograd the chunkwise form keeps every chunk's score block and every scan state for
the backward pass, so it needs more memory than a fused attention kernel. But the gradients of

    O_i = s Σ_j D[i, j] (q_i · k_j) v_j

are themselves retentions of the same kind (dO = ∂L/∂O):

    dq_i = s Σ_j D[i, j]  (dO_i · v_j) k_j      = retention with mask D  of (dO, v, k)
    dk_j = s Σ_i D[i, j]  (v_j · dO_i) q_i      = retention with mask Dᵀ of (v, dO, q)
    dv_j = s Σ_i D[i, j]  (k_j · q_i)  dO_i     = retention with mask Dᵀ of (k, q, dO)

and Dᵀ is D on the reversed sequence: the 1D causal mask with the tokens flipped, the 2D quadrant
with rows and columns flipped; the 2- and 4-direction masks are symmetric (Dᵀ = D). So the backward
pass runs the same chunkwise forward three times (no autograd), recomputing the within-chunk scores
as fused linear-attention kernels do, and the only tensors kept between the passes are q, k and v.

The 2D class token (x = C−1, y = R) sees every patch with weight w_j = γ^((C−1−x_j) + (R−y_j)) and
no patch sees it; in Dᵀ its row is a column, so its part of dk and dv is added explicitly (O(N·d)).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import modes


class ChunkwiseSpec(NamedTuple):
    """Everything but the tensors that defines a chunkwise retention: hashable, no tensors."""

    chunk: int  # tokens per chunk (1D) or tile rows (2D)
    scale: float
    grid_shape: tuple[int, int] | None = None  # None = 1D
    class_token: bool = False
    directions: int = 1
    tile_cols: int | None = None  # 2D: columns per tile (None = whole rows)


def chunkwise_forward(spec: ChunkwiseSpec, log_gamma: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The chunkwise form of ``spec``'s mask, in plain tensor ops (autograd works through it too)."""
    if spec.grid_shape is None:
        return modes.chunkwise_1d(q, k, v, log_gamma, spec.chunk, spec.scale)

    def quadrant(q_, k_, v_, class_token=spec.class_token):
        return modes.chunkwise_2d(
            q_,
            k_,
            v_,
            log_gamma,
            spec.grid_shape,
            class_token,
            spec.chunk,
            cols_per_chunk=spec.tile_cols,
            scale=spec.scale,
        )

    if spec.directions == 1:
        return quadrant(q, k, v)
    return modes.multi_direction_2d(quadrant, q, k, v, log_gamma, spec.grid_shape, spec.directions, spec.scale)


def _transposed_forward(spec: ChunkwiseSpec, log_gamma: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Retention with the transposed mask Dᵀ over the tokens without the class token."""
    if spec.directions != 1:  # symmetric masks
        return chunkwise_forward(spec, log_gamma, q, k, v)
    plain = spec._replace(class_token=False)
    if spec.grid_shape is None:
        flip = lambda t: t.flip(2)  # noqa: E731
    else:
        flip = lambda t: modes.flip_grid(t, spec.grid_shape, True, True)  # noqa: E731
    return flip(chunkwise_forward(plain, log_gamma, flip(q), flip(k), flip(v)))


def _class_token_weights(spec: ChunkwiseSpec, log_gamma: Tensor) -> Tensor:
    """s·γ^((C−1−x_j) + (R−y_j)) for every patch j: how the class token sees it. (H, R·C, 1)."""
    rows, cols = spec.grid_shape
    x, y = modes.grid_coords(spec.grid_shape, False, log_gamma.dtype, log_gamma.device)
    return (torch.exp(((cols - 1 - x) + (rows - y)) * log_gamma[:, None]) * spec.scale)[..., None]


class ChunkwiseRetention(torch.autograd.Function):
    """``chunkwise_forward`` with the lean backward above (first-order gradients).

    Inputs of any floating dtype: both passes compute in ``log_gamma``'s dtype (float32, or float64)
    with autocast off, so a 16-bit input keeps float32 states; q, k, v are saved in their own dtype
    (half the memory of float32 copies) and the output and gradients come back in it.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor, spec: ChunkwiseSpec) -> Tensor:
        ctx.save_for_backward(q, k, v)
        # Kept on ctx, not saved: a constant, and this very tensor's rates key the table cache.
        ctx.spec, ctx.log_gamma = spec, log_gamma
        return _forward_in_state_dtype(spec, log_gamma, q, k, v)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: Tensor):
        spec: ChunkwiseSpec = ctx.spec
        log_gamma = ctx.log_gamma
        saved = ctx.saved_tensors
        with torch.autocast(d_out.device.type, enabled=False):
            q, k, v = (t.to(log_gamma.dtype) for t in saved)
            grads = _gradients(
                spec, log_gamma, q, k, v, d_out.to(log_gamma.dtype).contiguous(), ctx.needs_input_grad[:3]
            )
        return (*(None if g is None else g.to(t.dtype) for g, t in zip(grads, saved, strict=True)), None, None)


def _gradients(
    spec: ChunkwiseSpec,
    log_gamma: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    d_out: Tensor,
    needed: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(dq, dk, dv) of retention with ``spec``'s mask (module docstring); None where not ``needed``."""
    need_q, need_k, need_v = needed
    dq = chunkwise_forward(spec, log_gamma, d_out, v, k) if need_q else None
    if not (need_k or need_v):
        return dq, None, None
    cls = spec.class_token
    grid = slice(0, -1) if cls else slice(None)  # Dᵀ below covers the patches only
    qg, kg, vg, dg = (t[:, :, grid] for t in (q, k, v, d_out))
    dk = _transposed_forward(spec, log_gamma, vg, dg, qg) if need_k else None
    dv = _transposed_forward(spec, log_gamma, kg, qg, dg) if need_v else None
    if cls:  # the class token's row of D: it sees patch j with weight w_j, and itself with s
        weights = _class_token_weights(spec, log_gamma).to(q.dtype)  # (H, R·C, 1)
        q_cls, k_cls, v_cls, d_cls = (t[:, :, -1:] for t in (q, k, v, d_out))
        if need_k:
            dk = dk + weights * (vg @ d_cls.transpose(-1, -2)) * q_cls
            dk = torch.cat([dk, spec.scale * (d_cls * v_cls).sum(-1, keepdim=True) * q_cls], dim=2)
        if need_v:
            dv = dv + weights * (kg @ q_cls.transpose(-1, -2)) * d_cls
            dv = torch.cat([dv, spec.scale * (q_cls * k_cls).sum(-1, keepdim=True) * d_cls], dim=2)
    return dq, dk, dv


def chunkwise_retention(spec: ChunkwiseSpec, log_gamma: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Chunkwise retention in ``log_gamma``'s dtype with autocast off, returned in q's dtype; when
    gradients are needed, through :class:`ChunkwiseRetention` (which saves only q, k, v)."""
    if modes.needs_grad(q, k, v):
        return ChunkwiseRetention.apply(q, k, v, log_gamma, spec)
    return _forward_in_state_dtype(spec, log_gamma, q, k, v)


def _forward_in_state_dtype(spec: ChunkwiseSpec, log_gamma: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """:func:`chunkwise_forward` in ``log_gamma``'s dtype with autocast off, returned in q's dtype."""
    # Devices without autocast (meta, for shape inference) refuse even a disabled autocast context.
    off = (
        torch.autocast(q.device.type, enabled=False)
        if torch.amp.is_autocast_available(q.device.type)
        else (contextlib.nullcontext())
    )
    with off:
        dtype = log_gamma.dtype
        return chunkwise_forward(spec, log_gamma, q.to(dtype), k.to(dtype), v.to(dtype)).to(q.dtype)
