"""ViR: the isotropic Vision Retention Network (docs/design/method.md §3).

    image ─ PatchEmbed (p×p conv) ─ + pos_embed (patches only) ─ append class token (no pos embed)
          ─ [multipass: sequence ++ reversed sequence] ─ N × RetentionBlock ─ LayerNorm
          ─ pool (last token | first token | mean) ─ Linear head

The class token goes *last* because 1D retention is causal: only the final token sees every patch.
With 2D decay the class token sits one row below the grid, in the last column (docs/design/method.md §2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..retention import PARALLEL, STREAMING, RetentionForm, check_backend, check_form, whole_image_form
from ..retention.backends import AUTO_BACKEND
from .blocks import GradCheckpointingMixin, RetentionBlock
from .layers import (
    ClassifierHeadMixin,
    PatchEmbed,
    check_int,
    check_num_classes,
    init_linear_trunc_normal,
    resolve_indices,
    to_2tuple,
)
from .pos_embed import infer_grid_shape, resize_pos_embed
from .registry import register_model
from .retention_layer import RetentionModeMixin
from .streaming import BandReader, FeatureSink, check_inference_only, stream

#: Size table per family member (width, depth, heads), like mmpretrain's ``arch_zoo``.
ARCH_ZOO = {
    "nano": dict(embed_dim=96, depth=6, num_heads=3),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}

POOLINGS = ("token_last", "token_first", "avg")
DECAYS = ("1d", "2d")


class VisionRetention(RetentionModeMixin, GradCheckpointingMixin, ClassifierHeadMixin, nn.Module):
    """Isotropic ViR.

    Args:
        img_size: input size, int or (height, width); must be divisible by the patch size.
        patch_size: patch side p.
        in_chans: input channels.
        num_classes: classifier outputs (0 = no head, ``forward`` returns pooled features).
        embed_dim, depth, num_heads, mlp_ratio: the usual transformer sizes.
        qkv_bias: bias on the fused qkv projection.
        drop_rate: dropout before the head and inside the MLPs.
        drop_path_rate: stochastic depth, linearly increasing to this value over the blocks.
        layer_scale_init: LayerScale initial value.
        decay: ``"1d"`` raster-causal decay or ``"2d"`` quadrant Manhattan decay on the patch grid.
        directions: 2D decay only, 1/2/4 (see :func:`vir_lightning.retention.retention`); values
            above 1 see the whole image and therefore need ``pooling="avg"``.
        decay_schedule: ``"vir"`` or ``"retnet"``.
        pooling: ``"token_last"`` (class token appended last; the paper), ``"token_first"`` (class
            token prepended; an ablation — under causal 1D decay it sees only itself unless
            ``multipass``), or ``"avg"`` (no class token, mean of all tokens).
        multipass: 1D only — run on the sequence followed by its reverse; the head reads the final
            token, which has seen every token twice.
        retention_mode: ``"parallel"``, ``"recurrent"``, ``"chunkwise"``, ``"auto"`` or
            ``"streaming"`` (inference: band by band through every block, memory independent of
            the image height); see :meth:`set_retention_mode`.
        chunk_size: chunkwise chunk size (tokens in 1D, grid rows in 2D), or the streaming band
            height in patch rows; ``None`` = default.
        retention_backend: the retention op's implementation: ``"auto"`` (fused kernels on CUDA
            where installed, else torch), ``"torch"``, ``"triton"`` or ``"fla"`` (1D); see
            :meth:`set_retention_backend`.
        softmax_retention: the authors' released softmax variant, an ablation (parallel only).
        dynamic_img_size: accept any input size divisible by the patch, resizing the position
            embedding on the fly (otherwise another size raises).
        token_mixer: ``"retention"`` (ViR) or ``"attention"``: softmax attention through
            ``scaled_dot_product_attention`` in the same blocks — the ViT baseline of the
            benchmarks (registered as ``vit_*``). Attention has one form and no decay, so the
            decay, multipass and retention-mode options do not apply to it.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-5,
        decay: str = "1d",
        directions: int = 1,
        decay_schedule: str = "vir",
        pooling: str = "token_last",
        multipass: bool = False,
        retention_mode: RetentionForm = PARALLEL,
        chunk_size: int | None = None,
        softmax_retention: bool = False,
        dynamic_img_size: bool = False,
        token_mixer: str = "retention",
        retention_backend: str = AUTO_BACKEND,
    ):
        super().__init__()
        check_form(retention_mode, chunk_size)
        if token_mixer == "attention" and (decay != "1d" or directions != 1 or multipass or softmax_retention):
            raise ValueError(
                "token_mixer='attention' (the ViT baseline) takes no decay, directions, multipass or"
                " softmax_retention options; leave them at their defaults"
            )
        if decay not in DECAYS:
            raise ValueError(f"decay={decay!r} is unknown; expected one of {DECAYS}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is unknown; expected one of {POOLINGS}")
        if directions not in (1, 2, 4):
            raise ValueError(f"directions={directions!r} is invalid; expected 1, 2 or 4")
        if directions != 1 and (decay != "2d" or pooling != "avg"):
            raise ValueError(
                f"directions={directions} needs decay='2d' and pooling='avg' (got decay={decay!r},"
                f" pooling={pooling!r}): the class token is only defined for the upper-left quadrant"
            )
        if decay == "2d" and (multipass or pooling == "token_first"):
            raise ValueError(
                "decay='2d' supports pooling 'token_last' or 'avg' without multipass; for global 2D"
                " context use directions=4 with pooling='avg'"
            )
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate!r}; expected 0 <= rate < 1")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate={drop_rate!r}; expected 0 <= rate < 1")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio={mlp_ratio!r}; expected a positive number (e.g. 4.0)")
        num_classes = check_num_classes(num_classes)
        check_backend(retention_backend)
        for name, value, minimum in (
            ("in_chans", in_chans, 1),
            ("embed_dim", embed_dim, 1),
            ("num_heads", num_heads, 1),
            ("depth", depth, 0),
        ):
            check_int(name, value, minimum)

        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.decay = decay
        self.pooling = pooling
        self.multipass = multipass
        self.dynamic_img_size = dynamic_img_size
        self.has_class_token = pooling != "avg"
        self.in_chans = in_chans

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.patch_size = self.patch_embed.patch_size  # (height, width) of a patch in pixels
        self.img_size = to_2tuple(img_size, "img_size")
        ph, pw = self.patch_embed.patch_size
        if self.img_size[0] < ph or self.img_size[1] < pw:
            raise ValueError(
                f"img_size={img_size!r} is smaller than one {ph}×{pw} patch; expected at least the patch size"
            )
        self.grid_shape = self.patch_embed.grid_shape_for(*self.img_size)
        num_patches = self.grid_shape[0] * self.grid_shape[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if self.has_class_token else None

        # Linearly increasing stochastic depth; plain Python so construction works on any device.
        drop_paths = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        layer_mode, layer_chunk_size = whole_image_form(retention_mode, chunk_size)
        self.blocks = nn.ModuleList(
            RetentionBlock(
                embed_dim,
                num_heads,
                mlp_ratio,
                drop_path=drop_paths[i],
                layer_scale_init=layer_scale_init,
                drop=drop_rate,
                decay_schedule=decay_schedule,
                qkv_bias=qkv_bias,
                mode=layer_mode,
                chunk_size=layer_chunk_size,
                directions=directions,
                softmax_retention=softmax_retention,
                token_mixer=token_mixer,
                backend=retention_backend,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.register_load_state_dict_pre_hook(self._resize_pos_embed_on_load)
        self._init_weights()
        if retention_mode == STREAMING:
            self.set_retention_mode(STREAMING, chunk_size)

    def _init_weights(self) -> None:
        init_linear_trunc_normal(self, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    # ------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------

    def _pos_embed_for(self, grid_shape: tuple[int, int]) -> Tensor:
        if grid_shape == self.grid_shape:
            return self.pos_embed
        if not self.dynamic_img_size:
            ph, pw = self.patch_embed.patch_size
            raise ValueError(
                f"input gives a {grid_shape[0]}×{grid_shape[1]} patch grid ({grid_shape[0] * ph}×"
                f"{grid_shape[1] * pw} px) but the model was built for {self.img_size[0]}×{self.img_size[1]};"
                " build it with img_size=<your size> (weights load with the position embedding resized)"
                " or pass dynamic_img_size=True"
            )
        return resize_pos_embed(self.pos_embed, self.grid_shape, grid_shape)

    def _embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Image → token sequence: patches (+ position) with the class token and multipass applied."""
        x, grid_shape = self.patch_embed(x)
        x = x + self._pos_embed_for(grid_shape)
        if self.has_class_token:
            cls = self.cls_token.expand(x.shape[0], -1, -1)
            x = torch.cat([x, cls] if self.pooling == "token_last" else [cls, x], dim=1)
        if self.multipass:
            x = torch.cat([x, x.flip(1)], dim=1)
        return x, grid_shape

    def _retention_kwargs(self, grid_shape: tuple[int, int]) -> dict:
        if self.decay == "1d":
            return {}
        return dict(grid_shape=grid_shape, class_token=self.has_class_token)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) → normalised tokens (B, tokens, dim)."""
        self._refuse_whole_image_tokens("forward_features")
        x, grid_shape = self._embed(x)
        kwargs = self._retention_kwargs(grid_shape)
        for block in self.blocks:
            x = block(x, **kwargs)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens (B, tokens, dim) → logits (B, num_classes), or pooled features if ``pre_logits``."""
        if self.pooling == "avg":
            x = x.mean(dim=1)
        elif self.pooling == "token_last" or self.multipass:
            x = x[:, -1]  # the final token has seen every token
        else:
            x = x[:, 0]
        return self._head_of_pooled(x, pre_logits)

    def _head_of_pooled(self, pooled: Tensor, pre_logits: bool) -> Tensor:
        pooled = self.head_drop(pooled)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: Tensor) -> Tensor:
        if self.streaming:
            grid_shape = self.patch_embed.grid_shape_for(*self._check_images(x))
            ph = self.patch_embed.patch_size[0]
            return self.forward_streaming(lambda row0, row1: x[:, :, row0 * ph : row1 * ph], grid_shape, x.shape[0])
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------------------------------
    # Streaming (docs/design/method.md §7; see .streaming)
    # ------------------------------------------------------------------------------------------

    def check_streamable(self) -> None:
        """ValueError naming the option that has no streaming form, if any."""
        reason, layers = None, self.retention_layers()
        if not layers:
            reason = (
                "the ViT baseline (token_mixer='attention') has no recurrent state: softmax attention needs"
                " every token at once"
            )
        elif layers[0].softmax_retention:
            reason = (
                "softmax_retention normalises over the whole sequence (and is not causal), so it has no state to carry"
            )
        elif layers[0].directions != 1:
            reason = (
                f"directions={layers[0].directions} lets every token see the rows below it, so"
                " no band can finish before the image does; use directions=1"
            )
        elif self.pooling == "token_first" and not self.multipass:
            reason = (
                "pooling='token_first' without multipass reads a class token that has seen only itself;"
                " use token_last or avg"
            )
        if reason:
            raise ValueError(f"streaming is not possible with this model: {reason}")

    def _check_images(self, x: Tensor) -> tuple[int, int]:
        return self.patch_embed.check_images(x)

    def embed_band(self, pixels: Tensor, grid_shape: tuple[int, int], row0: int, row1: int) -> Tensor:
        """Patch and position embedding of patch rows [row0, row1) of an image whose whole grid is
        ``grid_shape``: pixels (B, C, (row1−row0)·p, cols·p) → tokens (B, (row1−row0)·cols, dim).
        The position embedding is computed for these rows only (never for the whole grid)."""
        tokens, band_grid = self.patch_embed(pixels)
        if band_grid != (row1 - row0, grid_shape[1]):
            raise ValueError(
                f"band of patch rows {row0}:{row1} read as a {band_grid[0]}×{band_grid[1]} grid; expected"
                f" {row1 - row0}×{grid_shape[1]} (the band reader returned the wrong pixel rows)"
            )
        return tokens + resize_pos_embed(self.pos_embed, self.grid_shape, grid_shape, rows=slice(row0, row1))

    def forward_streaming(
        self,
        read_band: BandReader,
        grid_shape: tuple[int, int],
        batch: int,
        on_features: FeatureSink | None = None,
        pre_logits: bool = False,
    ) -> Tensor:
        """Logits of an image that is read band by band and never held whole (streaming mode).

        Args:
            read_band: ``read_band(row0, row1)`` → the pixels of patch rows [row0, row1),
                (batch, channels, (row1−row0)·p, cols·p), normalised like the training data.
            grid_shape: the image's whole patch grid (rows, cols).
            batch: images per call (the batch dimension of every band).
            on_features: called as ``on_features(row0, features)`` with the final-norm features
                (batch, band rows, cols, dim) of each band's patch tokens (first pass), for dense use.
            pre_logits: return the pooled features instead of the logits.

        Returns:
            (batch, num_classes) logits, equal to every other form's.
        """
        if not self.streaming:
            raise ValueError("forward_streaming needs streaming mode: call model.set_retention_mode('streaming') first")
        check_inference_only(self)
        if not (isinstance(grid_shape, (tuple, list)) and len(grid_shape) == 2):
            raise ValueError(f"grid_shape={grid_shape!r} is invalid; expected the image's patch grid (rows, cols)")
        grid_shape = (check_int("grid_shape rows", grid_shape[0]), check_int("grid_shape cols", grid_shape[1]))
        batch = check_int("batch", batch, 0)
        self._pos_embed_size_check(grid_shape)
        pooled = stream(self, read_band, grid_shape, batch, self.band_rows, on_features)
        return self._head_of_pooled(pooled, pre_logits)

    def _pos_embed_size_check(self, grid_shape: tuple[int, int]) -> None:
        if tuple(grid_shape) != self.grid_shape and not self.dynamic_img_size:
            self._pos_embed_for(tuple(grid_shape))  # raises the message that names the fix

    def _refuse_whole_image_tokens(self, verb: str) -> None:
        if self.streaming:
            raise ValueError(
                f"{verb} returns every token of the image at once, which is exactly what streaming mode"
                " avoids; use model(images) for logits, model.forward_streaming(..., on_features=fn) for"
                " per-token features band by band, or set_retention_mode('chunkwise') for whole tensors"
            )

    def _patch_tokens(self, x: Tensor, grid_shape: tuple[int, int]) -> Tensor:
        """The patch tokens of the first pass, (B, rows·cols, dim)."""
        start = 1 if self.pooling == "token_first" else 0
        return x[:, start : start + grid_shape[0] * grid_shape[1]]

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Patch-token feature maps after selected blocks.

        Args:
            x: images (B, C, H, W).
            indices: ``None`` = every block, int n = the last n blocks, list = block indices
                (negative counts from the end).
            norm: apply the final LayerNorm to each intermediate.
            output_fmt: ``"NCHW"`` (B, dim, rows, cols) or ``"NLC"`` (B, rows·cols, dim).
            intermediates_only: return only the list.

        Returns:
            ``intermediates`` or ``(final normalised tokens, intermediates)``.
        """
        self._refuse_whole_image_tokens("forward_intermediates")
        wanted = resolve_indices(indices, len(self.blocks), "blocks")
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}; expected 'NCHW' or 'NLC'")

        x, grid_shape = self._embed(x)
        kwargs = self._retention_kwargs(grid_shape)
        intermediates = []
        for i, block in enumerate(self.blocks):
            x = block(x, **kwargs)
            if i in wanted:
                feats = self._patch_tokens(self.norm(x) if norm else x, grid_shape)
                if output_fmt == "NCHW":
                    feats = feats.transpose(1, 2).reshape(x.shape[0], feats.shape[-1], *grid_shape)
                intermediates.append(feats)
            if intermediates_only and i >= max(wanted):
                return intermediates
        return intermediates if intermediates_only else (self.norm(x), intermediates)

    # ------------------------------------------------------------------------------------------
    # timm-style utilities
    # ------------------------------------------------------------------------------------------

    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay: position embedding, class token, and
        every bias, norm weight and LayerScale (all parameters with fewer than 2 dimensions)."""
        names = {"pos_embed"} | ({"cls_token"} if self.cls_token is not None else set())
        return names | {n for n, p in self.named_parameters() if p.ndim <= 1}

    def get_layer_depth(self, name: str) -> tuple[int, int]:
        """(layer id, number of layers) of a parameter, for layer-wise lr decay: the patch and
        position embeddings and the class token are layer 0, block i is layer i + 1, the final norm
        and the head the last layer (depth + 1)."""
        num_layers = len(self.blocks) + 2
        if name.startswith(("patch_embed.", "pos_embed", "cls_token")):
            return 0, num_layers
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1, num_layers
        return num_layers - 1, num_layers

    def _resize_pos_embed_on_load(self, module, state_dict, prefix, *args) -> None:
        """Load hook: a checkpoint trained at another resolution gets its position embedding
        resized (bicubic on the patch grid) to this model's grid."""
        key = prefix + "pos_embed"
        if key not in state_dict:
            return
        loaded = state_dict[key]
        if loaded.dim() != 3 or loaded.shape[-1] != self.pos_embed.shape[-1]:
            return  # let load_state_dict report the mismatch
        if loaded.shape[1] != self.pos_embed.shape[1]:
            old_grid = infer_grid_shape(loaded.shape[1], self.grid_shape)
            state_dict[key] = resize_pos_embed(loaded, old_grid, self.grid_shape)


# ----------------------------------------------------------------------------------------------
# Registered variants
# ----------------------------------------------------------------------------------------------


def vir_from_arch(arch: str, patch_size: int, img_size: int, overrides: dict | None = None) -> VisionRetention:
    """A family member from :data:`ARCH_ZOO` at a patch and image size; ``overrides`` replace any
    default (``{"token_mixer": "attention"}`` gives the same-sized ViT baseline)."""
    if arch not in ARCH_ZOO:
        raise ValueError(f"arch={arch!r} is unknown; expected one of {sorted(ARCH_ZOO)}")
    kwargs = dict(ARCH_ZOO[arch], patch_size=patch_size, img_size=img_size)
    kwargs.update(overrides or {})
    return VisionRetention(**kwargs)


@register_model
def vir_nano_patch16_224(**overrides) -> VisionRetention:
    """CPU-sized ViR for tests: width 96, depth 6, 3 heads."""
    return vir_from_arch("nano", 16, 224, overrides)


@register_model
def vir_nano_patch4_28(**overrides) -> VisionRetention:
    """CPU-sized ViR for 28×28 images (Fashion-MNIST): 7×7 patch grid, width 96, depth 6."""
    return vir_from_arch("nano", 4, 28, overrides)


@register_model
def vir_tiny_patch16_224(**overrides) -> VisionRetention:
    """ViR-Ti/16: width 192, depth 12, 3 heads (DeiT-Ti sizes)."""
    return vir_from_arch("tiny", 16, 224, overrides)


@register_model
def vir_tiny_patch4_28(**overrides) -> VisionRetention:
    """ViR-Ti for 28×28 images: 7×7 patch grid, width 192, depth 12."""
    return vir_from_arch("tiny", 4, 28, overrides)


@register_model
def vir_small_patch16_224(**overrides) -> VisionRetention:
    """ViR-S/16: width 384, depth 12, 6 heads — 22.06M parameters with 1000 classes."""
    return vir_from_arch("small", 16, 224, overrides)


@register_model
def vir_base_patch16_224(**overrides) -> VisionRetention:
    """ViR-B/16: width 768, depth 12, 12 heads — 86.59M parameters with 1000 classes."""
    return vir_from_arch("base", 16, 224, overrides)


@register_model
def vir_large_patch16_224(**overrides) -> VisionRetention:
    """ViR-L/16: width 1024, depth 24, 16 heads — 304.38M parameters with 1000 classes."""
    return vir_from_arch("large", 16, 224, overrides)


@register_model
def vir_large_patch14_224(**overrides) -> VisionRetention:
    """ViR-L/14: width 1024, depth 24, 16 heads — 304.25M parameters with 1000 classes."""
    return vir_from_arch("large", 14, 224, overrides)
