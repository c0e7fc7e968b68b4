"""OpenMMLab adapters: H-ViR as an MMDetection/MMSegmentation backbone (``downstream.hvir_backbone``).

Nothing is imported here, so ``import downstream`` works without the mm tier installed.
"""
