"""H-ViR as an MMDetection / MMSegmentation backbone: one class, registered in both registries.

Configs load it with::

    custom_imports = dict(imports=["downstream.hvir_backbone"], allow_failed_imports=False)
    model = dict(backbone=dict(type="HViRBackbone", arch="tiny", ...))

``mim train`` runs the ``tools/train.py`` inside the installed mmdet/mmseg, so the working
directory is not on ``sys.path``: this module is importable because ``downstream`` is installed with
the project (``pip install -e .``). Importing it also makes mmengine's own checkpoints loadable
under torch's ``weights_only`` default (see :mod:`downstream.safe_checkpoints`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from vir_lightning.deploy.checkpoints import exported_meta, read_state_dict
from vir_lightning.deploy.pretrained import weight_mismatches
from vir_lightning.models.hvir import ARCH_ZOO, HybridViR
from vir_lightning.models.retention_layer import TrainEvalFormsMixin
from vir_lightning.retention import AUTO, RetentionForm, TrainForm

from . import safe_checkpoints  # noqa: F401  (registers mmengine's checkpoint types as safe)

#: Keys of an exported classification checkpoint that a backbone does not use.
CLASSIFIER_ONLY_PREFIXES = ("head.", "norm.")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (the per-output norm, as Swin/ConvNeXt do)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _output_norm(kind: str | bool | None, channels: int) -> nn.Module:
    """The norm on one returned output (see ``HViRBackbone``'s ``out_norm``)."""
    if kind is True or kind is False:  # the former boolean flag: True was the LayerNorm
        kind = "ln" if kind else None
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "ln":
        return LayerNorm2d(channels, eps=1e-6)
    if kind is None:
        return nn.Identity()
    raise ValueError(f"out_norm={kind!r} is invalid; expected 'bn', 'ln' or None")


class HViRBackbone(TrainEvalFormsMixin, BaseModule):
    """H-ViR feature pyramid (strides 4/8/16/32) for MMDetection and MMSegmentation.

    Args:
        arch: ``"nano"``, ``"tiny"``, ``"small"`` or ``"base"`` (H-ViR's size table), or a dict of
            :class:`~vir_lightning.models.HybridViR` sizes (``dim``, ``depths``, ``num_heads``).
        out_indices: stages whose outputs are returned (0–3 ↔ strides 4, 8, 16, 32).
        out_norm: the norm on each returned output: ``"bn"`` (default) a BatchNorm2d, the kind of
            norm H-ViR's own classifier ends with; ``"ln"`` a LayerNorm over the channels at each
            position, as Swin does; ``None`` (or ``False``) none. A per-position LayerNorm scales
            flat background up to the norm of an edge, and H-ViR's conv-stage outputs carry much of
            their localisation in that contrast: with ``"ln"`` Mask R-CNN on the mini set could not
            fit even one batch (mask loss 0.34 after 120 steps, against 0.07 with none), with
            ``"bn"`` or none it fits like ResNet-18 (docs/results/downstream-mini.md). ``True`` means ``"ln"``.
        drop_path_rate: stochastic depth over all blocks.
        directions: 2D decay directions (1, 2 or 4); ``None`` keeps H-ViR's default.
        layer_scale_init: LayerScale of the retention blocks.
        train_mode: retention form while training. ``"auto"`` (default) picks parallel for short
            grids and chunkwise above the measured crossover, whose backward pass keeps only q, k, v
            (the same path as the classifier's ``train_mode``); gradients are identical in all forms.
        eval_mode: retention form in eval mode (validation/test/inference). Every form gives the
            same outputs; chunkwise needs far less memory at detection resolutions. (Formerly
            ``test_mode``, still accepted with a FutureWarning: one name with the classifier's.)
        chunk_size: chunkwise tile height in grid rows (``None`` = tiles of about 256 tokens), in
            both forms.
        with_cp: gradient checkpointing of the retention blocks (MMDetection's name for it, as in
            its Swin and ResNet): less training memory, identical gradients.
        frozen_stages: ``-1`` trains everything; ``0`` freezes the stem; ``k ≥ 1`` freezes the stem
            and stages 0…k−1 (with the downsampling convs before them), kept in eval mode.
        norm_eval: keep every BatchNorm in eval mode while training (frozen statistics), as
            detection fine-tuning with small per-GPU batches usually wants.
        init_cfg: ``dict(type="Pretrained", checkpoint=PATH)`` loads a backbone exported with
            ``python -m vir_lightning export-backbone``; ``prefix`` selects a sub-module of a
            larger checkpoint (e.g. ``"backbone."``). Missing or unexpected keys raise.
    """

    def __init__(
        self,
        arch: str | dict = "tiny",
        out_indices: Sequence[int] = (0, 1, 2, 3),
        out_norm: str | bool | None = "bn",
        drop_path_rate: float = 0.2,
        directions: int | None = None,
        layer_scale_init: float | None = 1e-5,
        train_mode: TrainForm = AUTO,
        eval_mode: RetentionForm = AUTO,
        chunk_size: int | None = None,
        with_cp: bool = False,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        in_chans: int = 3,
        init_cfg: dict | None = None,
        test_mode: str | None = None,
    ):
        super().__init__(init_cfg=init_cfg)
        if test_mode is not None:  # the former name of eval_mode
            if eval_mode != AUTO and eval_mode != test_mode:
                raise ValueError(
                    f"eval_mode={eval_mode!r} and test_mode={test_mode!r}: test_mode is the former name"
                    " of eval_mode; set eval_mode only"
                )
            warnings.warn(
                "HViRBackbone(test_mode=...) is renamed eval_mode (as in ImageClassifier); test_mode"
                " still works but will be removed",
                FutureWarning,
                stacklevel=2,
            )
            eval_mode = test_mode
        if init_cfg is not None and init_cfg.get("type") != "Pretrained":
            raise ValueError(f"init_cfg={init_cfg!r}: only dict(type='Pretrained', checkpoint=PATH) is supported")
        if isinstance(arch, str):
            if arch not in ARCH_ZOO:
                raise ValueError(f"arch={arch!r} is unknown; expected one of {sorted(ARCH_ZOO)} or a dict of sizes")
            sizes = dict(ARCH_ZOO[arch])
        else:
            sizes = dict(arch)
        out_indices = tuple(out_indices)
        if not out_indices or len(set(out_indices)) < len(out_indices) or not set(out_indices) <= {0, 1, 2, 3}:
            raise ValueError(f"out_indices={out_indices}: expected distinct stage indices among 0, 1, 2, 3")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages={frozen_stages}: expected -1 (none), 0 (stem) … 4 (all stages)")
        extra = {} if directions is None else {"directions": directions}
        self.model = HybridViR(
            **sizes,
            num_classes=0,
            in_chans=in_chans,
            drop_path_rate=drop_path_rate,
            layer_scale_init=layer_scale_init,
            **extra,
        )
        # Parameters that never reach the outputs would break DDP (unused parameters): the
        # classification norm, and the stages after the last requested one, are removed.
        self.model.norm = nn.Identity()
        self.model.set_grad_checkpointing(with_cp)
        self.unused_prefixes = CLASSIFIER_ONLY_PREFIXES
        for i in range(max(out_indices) + 1, 4):
            self.model.stages[i] = nn.Identity()
            self.model.downsamples[i] = nn.Identity()
            self.unused_prefixes += (f"stages.{i}.", f"downsamples.{i}.")
        self.arch = arch
        self.out_indices = out_indices
        self.num_features = [self.model.feature_info[i]["num_chs"] for i in out_indices]
        self.out_norms = nn.ModuleList(_output_norm(out_norm, c) for c in self.num_features)
        self.chunk_size = chunk_size
        self.set_train_eval_forms(train_mode, chunk_size, eval_mode, chunk_size)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._freeze_stages()

    # ------------------------------------------------------------------------------------------
    # Freezing and modes
    # ------------------------------------------------------------------------------------------

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules = [self.model.stem]
        for i in range(self.frozen_stages):
            modules += [self.model.downsamples[i], self.model.stages[i]]
        return modules

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> HViRBackbone:
        """Train/eval as usual, then re-freeze frozen stages, apply ``norm_eval`` and pick the
        retention form (``train_mode`` while training, ``eval_mode`` in eval)."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        self.use_form_for(mode)
        return self

    # ------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Images (B, C, H, W) → one map per ``out_indices``: (B, C_i, ⌈H/s_i⌉, ⌈W/s_i⌉)."""
        feats = self.model.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True)
        return tuple(norm(f) for norm, f in zip(self.out_norms, feats, strict=True))

    # ------------------------------------------------------------------------------------------
    # Pretrained weights
    # ------------------------------------------------------------------------------------------

    def init_weights(self) -> None:
        """Load ``init_cfg``'s checkpoint strictly, or keep the constructor's initialisation.

        mmengine's generic ``Pretrained`` initialiser loads with ``strict=False`` and only logs
        what did not match, which hides a wrong file; this one raises instead.
        """
        checkpoint = (self.init_cfg or {}).get("checkpoint")
        if not checkpoint:  # no init_cfg, or the configs' placeholder checkpoint=None: train from scratch
            MMLogger.get_current_instance().info("HViRBackbone: no pretrained checkpoint, random initialisation")
            return
        report = self.load_pretrained(checkpoint, prefix=self.init_cfg.get("prefix"))
        MMLogger.get_current_instance().info(
            f"HViRBackbone: loaded {report['loaded']} tensors from {checkpoint}; ignored {len(report['ignored'])}"
            f" unused keys (classifier, stages after out_indices): {report['ignored'][:4]}"
            + (f"; grey → RGB input kernel: {report['adapted']}" if report["adapted"] else "")
        )
        self._is_init = True

    def load_pretrained(self, path: str, prefix: str | None = None) -> dict:
        """Load an exported H-ViR state_dict (tensors only) into the backbone.

        Returns ``{"loaded": n, "ignored": [...], "adapted": [...]}``. ``adapted`` names a grey
        (1-channel) stem kernel spread over the RGB input (see ``_adapt_input_channels``); ``ignored``
        are the classifier's keys and those of stages after the last of ``out_indices`` (removed from
        the backbone). Raises ValueError when a key the backbone
        needs is missing, when the file has keys the backbone does not know, or when shapes differ
        (another ``arch``); the message names the first offending keys.
        """
        state = read_state_dict(path)
        if prefix:
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not state:
                raise ValueError(f"{path!r} has no keys starting with prefix={prefix!r}")
        ignored = sorted(k for k in state if k.startswith(self.unused_prefixes))
        state = {k: v for k, v in state.items() if k not in set(ignored)}
        own = self.model.state_dict()
        adapted = self._adapt_input_channels(state, own)
        problems = weight_mismatches(own, state)
        if problems:
            meta = exported_meta(path)  # again, on this error path only: what the file says it is
            name = meta.get("model_name") if meta else None
            if name and not str(name).startswith("hvir"):
                raise ValueError(
                    f"{path!r} holds the backbone of {name!r}, not of an H-ViR: the detection and"
                    " segmentation backbone is H-ViR (hvir_*); export a checkpoint trained with"
                    f" model_name hvir_{self.arch}"
                )
            raise ValueError(
                f"{path!r} does not fit HViRBackbone(arch={self.arch!r}): {'; '.join(problems)}. Export the"
                " backbone with `python -m vir_lightning export-backbone CKPT OUT` from a checkpoint of the"
                " same arch, or set init_cfg.prefix to the backbone's key prefix"
            )
        with torch.no_grad():
            self.model.load_state_dict(state, strict=True)
        return {"loaded": len(state), "ignored": ignored, "adapted": adapted}

    @staticmethod
    def _adapt_input_channels(state: dict[str, Tensor], own: dict[str, Tensor]) -> list[str]:
        """Let a backbone pretrained on grey images (``in_chans=1``) start an RGB one, in place.

        The stem's first kernel is repeated over the input channels and divided by their number, so
        a grey image given as three equal channels has exactly the pretrained response. Only the
        1 → N case is adapted; any other channel difference stays a shape mismatch.
        """
        key = "stem.0.weight"
        if (
            key in state
            and key in own
            and state[key].shape[1] == 1
            and own[key].shape[1] > 1
            and state[key].shape[0] == own[key].shape[0]
            and state[key].shape[2:] == own[key].shape[2:]
        ):
            channels = own[key].shape[1]
            state[key] = state[key].repeat(1, channels, 1, 1) / channels
            return [key]
        return []


def _register() -> None:
    """Register in every OpenMMLab registry that is installed (mmdet, mmseg or both)."""
    registered = []
    for registry_module in ("mmdet.registry", "mmseg.registry"):
        try:
            registry = __import__(registry_module, fromlist=["MODELS"]).MODELS
        except ImportError:
            continue
        registry.register_module(name="HViRBackbone", module=HViRBackbone, force=True)
        registered.append(registry_module)
    if not registered:
        raise ImportError(
            "neither mmdet nor mmseg is installed; install the OpenMMLab tier with `make mm`"
            " (downstream/install_mm.sh) to use HViRBackbone"
        )


_register()
