"""Multi-head softmax attention through ``scaled_dot_product_attention``: the ViT baseline's mixer.

It has the same fused qkv and output projections as :class:`MultiHeadRetention`, so a ViT built
from it differs from ViR only in the token mixer — the fair baseline for speed and memory.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MultiHeadAttention(nn.Module):
    """qkv Linear → SDPA per head (fused kernels: flash/memory-efficient on GPU, flash on CPU) →
    concatenated heads → output Linear.

    Args:
        dim: model width, divisible by ``num_heads``.
        num_heads: number of heads.
        qkv_bias: bias on the fused qkv projection.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, grid_shape: tuple[int, int] | None = None, class_token: bool = False) -> Tensor:
        """x: (B, N, dim) → (B, N, dim). Attention is global: ``grid_shape``/``class_token`` are ignored."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim^−½, like retention's q
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, sdpa=True"
