"""H-ViR: the hierarchical hybrid — convolutions at high resolution, 2D retention at low (docs/design/method.md §5).

    image ─ stem (two 3×3 stride-2 convs) ─────────────────────────── stride 4
          ─ stage 1: residual conv blocks ─────────────────────────── out 0, stride 4,  C
          ─ downsample (3×3 stride-2 conv) ─ stage 2: conv blocks ─── out 1, stride 8,  2C
          ─ downsample ─ stage 3: retention blocks on the 2D grid ─── out 2, stride 16, 4C
          ─ downsample ─ stage 4: retention blocks on the 2D grid ─── out 3, stride 32, 8C
          ─ BatchNorm ─ global average pool ─ Linear head

The layout follows MambaVision/FasterViT (the first author's hybrid family) with retention as the
token mixer of stages 3–4. There is no position embedding: the convolutions and the 2D decay carry
position, so any input size works, non-square and not divisible by 32 (each stride-2 conv rounds
up: a 100×75 image gives 25×19, 13×10, 7×5 and 4×3 grids).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..retention import PARALLEL, STREAMING, OpForm, check_form
from ..retention.backends import AUTO_BACKEND
from .blocks import GradCheckpointingMixin, RetentionBlock
from .layers import (
    ClassifierHeadMixin,
    DropPath,
    check_images,
    check_int,
    check_num_classes,
    init_linear_trunc_normal,
    resolve_indices,
    to_2tuple,
)
from .registry import register_model
from .retention_layer import RetentionModeMixin

#: Size table (stem width C, blocks per stage, retention heads of stages 3 and 4), like mmpretrain's
#: ``arch_zoo``. Stage widths are C, 2C, 4C, 8C. T/S/B are sized to MambaVision's T/S/B budgets
#: (~30M/50M/95M): 31.7M/47.6M/93.7M with a 1000-class head.
ARCH_ZOO = {
    "nano": dict(dim=32, depths=(1, 1, 2, 2), num_heads=(2, 4)),
    "tiny": dict(dim=80, depths=(1, 3, 6, 4), num_heads=(8, 16)),
    "small": dict(dim=96, depths=(3, 3, 7, 4), num_heads=(8, 16)),
    "base": dict(dim=128, depths=(3, 3, 10, 4), num_heads=(8, 16)),
}


def _conv_bn(in_chans: int, out_chans: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_chans, out_chans, 3, stride, 1, bias=False), nn.BatchNorm2d(out_chans)]


class ConvBlock(nn.Module):
    """x + DropPath(BN(conv3×3(GELU(BN(conv3×3(x))))))."""

    def __init__(self, dim: int, drop_path: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(dim, dim), nn.GELU(), *_conv_bn(dim, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.body(x))


class RetentionStage(nn.Module):
    """Retention blocks over the feature map's own grid: (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, dim: int, depth: int, num_heads: int, drop_paths: list[float], **block_kwargs):
        super().__init__()
        self.blocks = nn.ModuleList(
            RetentionBlock(dim, num_heads, drop_path=drop_paths[i], **block_kwargs) for i in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, H·W, C) in raster order
        for block in self.blocks:
            tokens = block(tokens, grid_shape=(height, width))
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class HybridViR(RetentionModeMixin, GradCheckpointingMixin, ClassifierHeadMixin, nn.Module):
    """H-ViR: conv stages 1–2, 2D-retention stages 3–4, features at strides 4/8/16/32.

    Args:
        in_chans: input channels.
        num_classes: classifier outputs (0 = no head; ``forward`` returns pooled features).
        dim: stage-1 width C; stages are C, 2C, 4C, 8C wide.
        depths: blocks in each of the four stages.
        num_heads: retention heads in stages 3 and 4.
        mlp_ratio: MLP width of the retention blocks as a multiple of their width.
        drop_path_rate: stochastic depth, linearly increasing to this value over all blocks.
        layer_scale_init: LayerScale of the retention blocks (``None`` disables it).
        directions: 2D decay directions, 1 (upper-left quadrant), 2 or 4 (the whole grid). The
            default 1 was chosen by measurement (docs/results/highres-training.md): the same
            Fashion-MNIST accuracy as 4, and 3× faster chunkwise inference at 1333×800.
        decay_schedule: ``"vir"`` or ``"retnet"``.
        retention_mode: ``"parallel"``, ``"recurrent"`` or ``"chunkwise"``; see
            :meth:`set_retention_mode`. Outputs are identical in every mode.
        chunk_size: chunkwise tile height in grid rows (``None`` = tiles of about 256 tokens).
        drop_rate: dropout before the head and inside the MLPs.
        retention_backend: the retention op's implementation in stages 3–4: ``"auto"`` (the fused
            Triton kernel on CUDA where installed, else torch), ``"torch"`` or ``"triton"``.
        img_size: the nominal training size, recorded only (every family takes it, so the
            classification task can pass it); H-ViR runs at any input size.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        dim: int = 80,
        depths: tuple[int, int, int, int] = (1, 3, 6, 4),
        num_heads: tuple[int, int] = (8, 16),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = 1e-5,
        directions: int = 1,
        decay_schedule: str = "vir",
        retention_mode: OpForm = PARALLEL,
        chunk_size: int | None = None,
        drop_rate: float = 0.0,
        img_size: int | tuple[int, int] = 224,
        retention_backend: str = AUTO_BACKEND,
    ):
        super().__init__()
        check_form(retention_mode, chunk_size)
        if retention_mode == STREAMING:
            self.check_streamable()  # names why H-ViR cannot stream

        def ints(value, count: int, minimum: int) -> bool:
            return (
                isinstance(value, (tuple, list))
                and len(value) == count
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
            )

        if not ints(depths, 4, 0) or not ints(num_heads, 2, 1):
            raise ValueError(
                f"depths={depths!r} / num_heads={num_heads!r}: expected 4 stage depths and 2 head counts"
                " (integers >= 0 and >= 1), e.g. depths=(1, 3, 6, 4), num_heads=(8, 16)"
            )
        # The stem's first convolution is dim // 2 wide.
        check_int("dim", dim, 2, " (stage 1 width; the stem starts at dim // 2)")
        check_int("in_chans", in_chans, 1)
        num_classes = check_num_classes(num_classes)
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate={drop_rate!r}; expected 0 <= rate < 1")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio={mlp_ratio!r}; expected a positive number (e.g. 4.0)")
        if directions not in (1, 2, 4):
            raise ValueError(f"directions={directions!r} is invalid; expected 1, 2 or 4")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate!r}; expected 0 <= rate < 1")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = to_2tuple(img_size, "img_size")
        self.directions = directions
        widths = [dim * 2**i for i in range(4)]
        self.num_features = widths[-1]
        drop_paths = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        stage_drop_paths = [drop_paths[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(4)]

        self.stem = nn.Sequential(
            *_conv_bn(in_chans, dim // 2, stride=2), nn.ReLU(), *_conv_bn(dim // 2, dim, stride=2), nn.ReLU()
        )
        self.downsamples = nn.ModuleList(
            nn.Identity() if i == 0 else nn.Conv2d(widths[i - 1], widths[i], 3, 2, 1, bias=False) for i in range(4)
        )
        retention_kwargs = dict(
            mlp_ratio=mlp_ratio,
            layer_scale_init=layer_scale_init,
            drop=drop_rate,
            directions=directions,
            decay_schedule=decay_schedule,
            mode=retention_mode,
            chunk_size=chunk_size,
            backend=retention_backend,
        )
        self.stages = nn.ModuleList(
            [nn.Sequential(*(ConvBlock(widths[i], p) for p in stage_drop_paths[i])) for i in range(2)]
            + [
                RetentionStage(widths[i], depths[i], num_heads[i - 2], stage_drop_paths[i], **retention_kwargs)
                for i in range(2, 4)
            ]
        )
        #: timm-style description of the four feature outputs.
        self.feature_info = [dict(num_chs=widths[i], reduction=2 ** (i + 2), module=f"stages.{i}") for i in range(4)]
        self.norm = nn.BatchNorm2d(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        init_linear_trunc_normal(self, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    # ------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------

    def _check_input(self, x: Tensor) -> None:
        check_images(x, self.in_chans, self.stem[0].weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) → normalised stage-4 map (B, 8C, ⌈H/32⌉, ⌈W/32⌉)."""
        self._check_input(x)
        x = self.stem(x)
        for downsample, stage in zip(self.downsamples, self.stages, strict=True):
            x = stage(downsample(x))
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Feature map (B, 8C, h, w) → logits (B, num_classes), or pooled features if ``pre_logits``."""
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs at strides 4/8/16/32.

        Args:
            x: images (B, C, H, W).
            indices: ``None`` = all four stages, int n = the last n, list = stage indices 0–3
                (negative counts from the end).
            norm: apply the final BatchNorm to the stage-4 output (the others have no norm here;
                the detection adapter adds one per output).
            output_fmt: ``"NCHW"`` only (the stages are maps).
            intermediates_only: return only the list, stopping after the last wanted stage.

        Returns:
            ``intermediates`` or ``(final normalised map, intermediates)``.
        """
        wanted = resolve_indices(indices, 4, "stages")
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}; H-ViR stages are maps, use 'NCHW'")
        self._check_input(x)
        x = self.stem(x)
        intermediates = []
        for i, (downsample, stage) in enumerate(zip(self.downsamples, self.stages, strict=True)):
            x = stage(downsample(x))
            if i in wanted:
                intermediates.append(self.norm(x) if norm and i == 3 else x)
            if intermediates_only and i >= max(wanted):
                return intermediates
        return intermediates if intermediates_only else (self.norm(x), intermediates)

    # ------------------------------------------------------------------------------------------
    # timm-style utilities
    # ------------------------------------------------------------------------------------------

    def no_weight_decay(self) -> set[str]:
        """Every bias, norm weight and LayerScale (all parameters with fewer than 2 dimensions)."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1}

    def get_layer_depth(self, name: str) -> tuple[int, int]:
        """(layer id, number of layers) of a parameter, for layer-wise lr decay: the stem is layer 0,
        the blocks of all four stages follow in order (a stage's downsampling belongs to its first
        block), and the final norm and the head are the last layer."""
        starts = [0]
        for stage in self.stages:  # a stage a backbone dropped (nn.Identity) has no blocks
            blocks = stage.blocks if isinstance(stage, RetentionStage) else stage
            starts.append(starts[-1] + (len(blocks) if isinstance(blocks, nn.Sequential | nn.ModuleList) else 0))
        num_layers = starts[-1] + 2
        parts = name.split(".")
        if parts[0] == "stem":
            return 0, num_layers
        if parts[0] == "downsamples":
            return starts[int(parts[1])] + 1, num_layers
        if parts[0] == "stages":
            stage = int(parts[1])
            block = int(parts[3] if parts[2] == "blocks" else parts[2])
            return starts[stage] + block + 1, num_layers
        return num_layers - 1, num_layers


def hvir_from_arch(arch: str, **overrides) -> HybridViR:
    """Build an H-ViR from its size table entry (``nano``/``tiny``/``small``/``base``)."""
    if arch not in ARCH_ZOO:
        raise ValueError(f"arch={arch!r} is unknown; expected one of {sorted(ARCH_ZOO)}")
    return HybridViR(**{**ARCH_ZOO[arch], **overrides})


@register_model
def hvir_nano(**overrides) -> HybridViR:
    """CPU-sized H-ViR for tests: C=32, depths 1/1/2/2, heads 2/4 — 2.72M parameters."""
    return hvir_from_arch("nano", **overrides)


@register_model
def hvir_tiny(**overrides) -> HybridViR:
    """H-ViR-T: C=80, depths 1/3/6/4, heads 8/16 — 31.69M parameters with 1000 classes."""
    return hvir_from_arch("tiny", **overrides)


@register_model
def hvir_small(**overrides) -> HybridViR:
    """H-ViR-S: C=96, depths 3/3/7/4, heads 8/16 — 47.57M parameters with 1000 classes."""
    return hvir_from_arch("small", **overrides)


@register_model
def hvir_base(**overrides) -> HybridViR:
    """H-ViR-B: C=128, depths 3/3/10/4, heads 8/16 — 93.65M parameters with 1000 classes."""
    return hvir_from_arch("base", **overrides)
