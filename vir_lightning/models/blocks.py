"""The pre-norm retention block shared by ViR and the retention stages of H-ViR."""

from __future__ import annotations

from torch import Tensor, nn

from .layers import DropPath, LayerScale, Mlp
from .retention_layer import MultiHeadRetention


class RetentionBlock(nn.Module):
    """x += DropPath(LayerScale(MHR(LN(x)))); x += DropPath(LayerScale(MLP(LN(x)))).

    Args:
        dim: width.
        num_heads: retention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        drop_path: stochastic-depth probability of this block.
        layer_scale_init: LayerScale initial value (``None`` disables LayerScale).
        drop: dropout inside the MLP.
        **retention_kwargs: passed to :class:`MultiHeadRetention` (decay_schedule, mode, …).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        layer_scale_init: float | None = 1e-5,
        drop: float = 0.0,
        **retention_kwargs,
    ):
        super().__init__()
        scale = (lambda: LayerScale(dim, layer_scale_init)) if layer_scale_init else nn.Identity
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.retention = MultiHeadRetention(dim, num_heads, **retention_kwargs)
        self.ls1 = scale()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.ls2 = scale()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor, grid_shape: tuple[int, int] | None = None, cls_token: bool = False) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.retention(self.norm1(x), grid_shape, cls_token)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
