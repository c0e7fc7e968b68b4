"""The ViT baseline: :class:`VisionRetention` with ``token_mixer="attention"`` (SDPA).

Same patch embedding, position embedding, blocks (LayerScale included), width, depth and heads as
the ViR of the same name; only the token mixer differs. Built for the throughput and memory
benchmark (``python -m vir_lightning bench``), and trainable with the same task and configs.
"""

from __future__ import annotations

from .registry import register_model
from .vir import VisionRetention, vir_from_arch


@register_model
def vit_nano_patch16_224(**overrides) -> VisionRetention:
    """ViT baseline of ``vir_nano_patch16_224``: width 96, depth 6, 3 heads."""
    return vir_from_arch("nano", 16, 224, {"token_mixer": "attention", **overrides})


@register_model
def vit_tiny_patch16_224(**overrides) -> VisionRetention:
    """ViT-Ti/16 baseline: width 192, depth 12, 3 heads."""
    return vir_from_arch("tiny", 16, 224, {"token_mixer": "attention", **overrides})


@register_model
def vit_small_patch16_224(**overrides) -> VisionRetention:
    """ViT-S/16 baseline: width 384, depth 12, 6 heads."""
    return vir_from_arch("small", 16, 224, {"token_mixer": "attention", **overrides})


@register_model
def vit_base_patch16_224(**overrides) -> VisionRetention:
    """ViT-B/16 baseline: width 768, depth 12, 12 heads."""
    return vir_from_arch("base", 16, 224, {"token_mixer": "attention", **overrides})


@register_model
def vit_large_patch16_224(**overrides) -> VisionRetention:
    """ViT-L/16 baseline: width 1024, depth 24, 16 heads."""
    return vir_from_arch("large", 16, 224, {"token_mixer": "attention", **overrides})
