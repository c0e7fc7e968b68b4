"""The pre-norm block shared by ViR, the retention stages of H-ViR and the ViT baseline."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import MultiHeadAttention
from .layers import DropPath, LayerScale, Mlp
from .retention_layer import MultiHeadRetention

TOKEN_MIXERS = ("retention", "attention")


class RetentionBlock(nn.Module):
    """x += DropPath(LayerScale(MHR(LN(x)))); x += DropPath(LayerScale(MLP(LN(x)))).

    Args:
        dim: width.
        num_heads: retention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        drop_path: stochastic-depth probability of this block.
        layer_scale_init: LayerScale initial value (``None`` disables LayerScale).
        drop: dropout inside the MLP.
        token_mixer: ``"retention"`` (:class:`MultiHeadRetention`, attribute ``retention``) or
            ``"attention"`` (:class:`MultiHeadAttention` through SDPA, attribute ``attn``): the ViT
            baseline, identical otherwise.
        **retention_kwargs: passed to :class:`MultiHeadRetention` (decay_schedule, mode, …); with
            attention only ``qkv_bias`` is used.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        layer_scale_init: float | None = 1e-5,
        drop: float = 0.0,
        token_mixer: str = "retention",
        **retention_kwargs,
    ):
        super().__init__()
        if token_mixer not in TOKEN_MIXERS:
            raise ValueError(f"token_mixer={token_mixer!r} is unknown; expected one of {TOKEN_MIXERS}")
        scale = (lambda: LayerScale(dim, layer_scale_init)) if layer_scale_init else nn.Identity
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.token_mixer = token_mixer
        if token_mixer == "retention":
            self.retention = MultiHeadRetention(dim, num_heads, **retention_kwargs)
        else:
            self.attn = MultiHeadAttention(dim, num_heads, qkv_bias=retention_kwargs.get("qkv_bias", True))
        self.ls1 = scale()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.ls2 = scale()
        self.drop_path2 = DropPath(drop_path)
        #: Recompute this block in the backward pass instead of keeping its activations
        #: (set through the model's ``set_grad_checkpointing``).
        self.grad_checkpointing = False

    def forward(self, x: Tensor, grid_shape: tuple[int, int] | None = None, class_token: bool = False) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            # Non-reentrant: works with keyword arguments and inputs that need no gradient; the RNG
            # state is replayed, so drop path draws the same mask when the block is recomputed.
            return checkpoint(self._forward, x, grid_shape, class_token, use_reentrant=False)
        return self._forward(x, grid_shape, class_token)

    def _forward(self, x: Tensor, grid_shape: tuple[int, int] | None, class_token: bool) -> Tensor:
        mixer = self.retention if self.token_mixer == "retention" else self.attn
        return self._residuals(x, mixer(self.norm1(x), grid_shape, class_token))

    def forward_step(
        self, x: Tensor, state: Tensor | None, grid_cols: int | None = None, class_token: bool = False
    ) -> tuple[Tensor, Tensor]:
        """One segment of the sequence through the block, retention continuing from ``state``
        (streaming; see :meth:`MultiHeadRetention.forward_step`). Returns (x, new state)."""
        mixed, state = self.retention.forward_step(self.norm1(x), state, grid_cols, class_token)
        return self._residuals(x, mixed), state

    def _residuals(self, x: Tensor, mixed: Tensor) -> Tensor:
        """Both residual branches around the token mixer's output; everything here is per token."""
        x = x + self.drop_path1(self.ls1(mixed))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class GradCheckpointingMixin:
    """timm's ``set_grad_checkpointing`` for models built from :class:`RetentionBlock`."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every retention (or attention) block in the backward pass instead of storing its
        activations: training memory drops to about one block's worth plus each block's input, for
        roughly one more forward pass of time. Gradients are unchanged.

        Only the token-mixing blocks are checkpointed. H-ViR's convolutional blocks are not: their
        BatchNorm would update its running statistics a second time when recomputed.
        """
        if not isinstance(enable, bool):
            raise ValueError(f"enable={enable!r}; expected True or False")
        for block in self.modules():
            if isinstance(block, RetentionBlock):
                block.grad_checkpointing = enable

    @property
    def grad_checkpointing(self) -> bool:
        """Whether the blocks are checkpointed; assigning to it calls :meth:`set_grad_checkpointing`."""
        return any(isinstance(m, RetentionBlock) and m.grad_checkpointing for m in self.modules())

    @grad_checkpointing.setter
    def grad_checkpointing(self, enable: bool) -> None:
        self.set_grad_checkpointing(enable)
