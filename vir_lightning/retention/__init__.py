"""Retention: softmax-free attention with a per-head exponential decay, in three exact forms.

PyTorch, plus fused GPU kernels behind ``backend=`` (:mod:`.backends`, imported on use); knows
nothing about models, Lightning or OpenMMLab.
"""

from .backends import BACKENDS, check_backend
from .forms import (
    AUTO,
    CHUNKWISE,
    EXACT_FORMS,
    MODEL_FORMS,
    OP_FORMS,
    PARALLEL,
    RECURRENT,
    STREAMING,
    TRAIN_FORMS,
    ExactForm,
    OpForm,
    RetentionForm,
    TrainForm,
    check_form,
    whole_image_form,
)
from .functional import (
    AUTO_PARALLEL_MAX_TOKENS,
    MODES,
    check_mode,
    default_chunk_size,
    resolve_mode,
    retention,
    retention_decay_matrix,
    retention_step,
    tile_shape,
)
from .schedules import DECAY_SCHEDULES, decay_rates_for

__all__ = [
    "AUTO",
    "CHUNKWISE",
    "EXACT_FORMS",
    "MODEL_FORMS",
    "OP_FORMS",
    "PARALLEL",
    "RECURRENT",
    "STREAMING",
    "TRAIN_FORMS",
    "ExactForm",
    "OpForm",
    "RetentionForm",
    "TrainForm",
    "check_form",
    "whole_image_form",
    "AUTO_PARALLEL_MAX_TOKENS",
    "BACKENDS",
    "DECAY_SCHEDULES",
    "MODES",
    "check_backend",
    "check_mode",
    "decay_rates_for",
    "default_chunk_size",
    "resolve_mode",
    "retention",
    "retention_decay_matrix",
    "retention_step",
    "tile_shape",
]
