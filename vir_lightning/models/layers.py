"""Small building blocks shared by the model families (written here: timm is not installable)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..checks import _is_int, check_int, to_2tuple  # (shared with data/ and deploy/, which need no model)


def check_num_classes(num_classes) -> int:
    return check_int("num_classes", num_classes, 0, " (0 = no classifier head: forward returns pooled features)")


def check_images(x, in_chans: int, weight: Tensor) -> None:
    """One clear error for input a model's first layer (``weight``) cannot take: not a tensor, not
    (batch, in_chans, H, W), not floating point, or another dtype / device than the weights.

    Shapes, dtypes and devices only (no device read). Under autocast the first layer casts the
    input itself, so another floating dtype is fine there.
    """
    if not isinstance(x, Tensor):
        raise TypeError(
            f"input is a {type(x).__name__}; expected a torch.Tensor (batch, {in_chans}, height, width),"
            " e.g. torch.from_numpy(array)"
        )
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"input has shape {tuple(x.shape)}; expected (batch, {in_chans}, height, width)")
    if not x.is_floating_point():
        raise ValueError(
            f"input has dtype {x.dtype}; expected floating-point images normalised like the training"
            " data (e.g. x.float() / 255, then the mean/std normalisation)"
        )
    if x.device != weight.device:
        raise ValueError(
            f"input is on {x.device} but the model is on {weight.device}; move one of them"
            f" (x.to({str(weight.device)!r}) or model.to({str(x.device)!r}))"
        )
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(
            f"input has dtype {x.dtype} but the model's weights are {weight.dtype}; pass"
            f" x.to({weight.dtype}), convert the model (model.to({x.dtype})) or run under torch.autocast"
        )


def resolve_indices(indices: int | Sequence[int] | None, count: int, what: str = "blocks") -> list[int]:
    """``forward_intermediates``' ``indices``: ``None`` = all ``count``, int n = the last n,
    a list = those positions (negative counts from the end). Raises ValueError when out of range."""
    if indices is None:
        return list(range(count))
    if isinstance(indices, bool) or not (indices is None or _is_int(indices) or isinstance(indices, Sequence)):
        raise ValueError(f"indices={indices!r} is invalid; expected None, the number of last {what} or a list of them")
    if _is_int(indices):
        if not 1 <= indices <= count:
            raise ValueError(f"indices={indices} is invalid; expected 1..{count} (the last n {what})")
        return list(range(count - indices, count))
    if not all(_is_int(i) for i in indices):
        raise ValueError(f"indices={list(indices)} is invalid; expected integer positions of {what} 0..{count - 1}")
    wanted = [i + count if i < 0 else i for i in indices]
    if not wanted or any(not 0 <= i < count for i in wanted):
        raise ValueError(f"indices={list(indices)} is invalid; there are {what} 0..{count - 1}")
    return wanted


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``drop_prob``.

    Kept samples are scaled by 1 / (1 − p) so the expectation is unchanged; identity at eval.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob={drop_prob!r}; expected 0 <= drop_prob < 1")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class LayerScale(nn.Module):
    """Per-channel learnable residual scale, initialised small (CaiT) so deep stacks start stable."""

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Linear → GELU → Linear (dim → hidden → dim), optional dropout."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches → tokens, with a strided Conv2d (bias, no norm).

    Returns (tokens, grid_shape): tokens (B, rows·cols, dim) in raster order, grid_shape (rows, cols).
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = to_2tuple(patch_size, "patch_size")
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def grid_shape_for(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid of an image, or ValueError if the image does not tile into whole patches."""
        ph, pw = self.patch_size
        if height % ph or width % pw:
            raise ValueError(
                f"image size {height}×{width} is not divisible by the patch size {ph}×{pw};"
                " resize or crop the input to a multiple of the patch size"
            )
        return height // ph, width // pw

    def check_images(self, x: Tensor) -> tuple[int, int]:
        """(height, width) of images this layer can embed, else one ValueError/TypeError naming the fix."""
        check_images(x, self.proj.in_channels, self.proj.weight)
        ph, pw = self.patch_size
        if x.shape[2] < ph or x.shape[3] < pw:
            raise ValueError(f"image of {x.shape[2]}×{x.shape[3]} px is smaller than one {ph}×{pw} patch")
        return x.shape[2], x.shape[3]

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        grid = self.grid_shape_for(*self.check_images(x))
        x = self.proj(x)  # (B, D, rows, cols)
        # contiguous (B, N, D): a transposed view would make every later elementwise result and
        # LayerNorm input strided (measured: LayerNorm then copies its input on every call)
        return x.flatten(2).transpose(1, 2).contiguous(), grid


def init_linear_trunc_normal(module: nn.Module, std: float = 0.02) -> None:
    """trunc_normal(std) weights and zero biases for every nn.Linear below ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ClassifierHeadMixin:
    """timm's ``get_classifier`` / ``reset_classifier`` for models with ``head`` on ``num_features``."""

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh one for ``num_classes`` outputs (0 = no head).

        Raises:
            ValueError: ``num_classes`` is not an integer >= 0.
        """
        num_classes = check_num_classes(num_classes)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        init_linear_trunc_normal(self.head)
