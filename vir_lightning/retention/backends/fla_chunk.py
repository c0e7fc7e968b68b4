"""The ``"fla"`` backend: 1D retention through flash-linear-attention's chunkwise kernel (CUDA only).

fla-core's ``chunk_simple_gla`` with a fixed per-head log decay ``g_gamma = log γ`` computes exactly
causal 1D retention, O_t = s·q_t S_t with S_t = γ S_{t−1} + k_tᵀ v_t, in chunks on the GPU, with
its own backward (dq, dk, dv and the initial state's gradient). Its layout is (B, T, H, ·): ours,
(B, H, T, ·), is a transposed view of it, so nothing is copied here (fla copies inputs that are not
contiguous). Its state (B, H, d, dv) in float32 is this package's 1D state, so it serves the
streaming step too. fla marks the op ``torch.compiler.disable``: under ``torch.compile`` the
``"auto"`` backend takes the Triton kernel instead, which compiles without a graph break. fla sets
no precision for its products, so fp32 inputs get TF32 products unless ``TRITON_F32_DEFAULT=ieee``.
"""

from __future__ import annotations

from torch import Tensor


def retention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_gamma: Tensor,
    scale: float,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """(out (B, H, T, dv), final state (B, H, d, dv) or None) for validated arguments."""
    from fla.ops.simple_gla import chunk_simple_gla  # CUDA-only dependency: imported on use

    out, state = chunk_simple_gla(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        g_gamma=log_gamma.float(),
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
    )
    return out.transpose(1, 2), state
