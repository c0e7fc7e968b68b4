"""ImageClassifier: the LightningModule that trains and evaluates any registry model."""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.classification import MulticlassAccuracy

from ..deploy.checkpoints import load_weights, read_state_dict
from ..models import create_model
from ..models.retention_layer import TrainEvalFormsMixin
from ..retention import AUTO, whole_image_form
from .optim import param_groups, warmup_cosine


class _DecodedBatches:
    """Per split, the batches an epoch saw and how many of them held a decodable image."""

    def __init__(self):
        self.seen: dict[str, int] = {}
        self.decoded: dict[str, int] = {}

    def start(self, split: str) -> None:
        self.seen[split] = self.decoded[split] = 0

    def count(self, split: str, batch) -> bool:
        """Count ``batch``; True when it holds images (False: all skipped, collated to None)."""
        self.seen[split] = self.seen.get(split, 0) + 1
        if batch is None:
            return False
        self.decoded[split] = self.decoded.get(split, 0) + 1
        return True

    def require(self, split: str) -> None:
        """ValueError when every batch this epoch saw was skipped: its metrics would silently be missing."""
        seen = self.seen.get(split, 0)
        if seen and not self.decoded.get(split, 0):
            raise ValueError(
                f"no image of the {split} split could be decoded ({seen} batches, every image"
                " skipped as undecodable); check the image files of that split"
            )


def default_optimizer(params) -> torch.optim.Optimizer:
    """AdamW(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05): the authors' defaults (docs/design/method.md §4)."""
    return torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05)


#: Hyperparameters that define the network a checkpoint's weights belong to. A checkpoint given with
#: ``--ckpt_path`` must agree on them; everything else (retention forms, chunk sizes, schedule, data)
#: comes from the command line and config, never from the checkpoint.
ARCHITECTURE_HPARAMS = ("model_name", "model_kwargs", "num_classes", "img_size", "in_chans", "class_names")
#: ``model_kwargs`` that choose a retention form or a training regulariser, not the network.
NON_ARCHITECTURE_MODEL_KWARGS = frozenset(
    {"retention_mode", "chunk_size", "retention_backend", "drop_rate", "drop_path_rate"}
)


def architecture_mismatch(saved: dict, current: dict) -> str | None:
    """What differs between a checkpoint's architecture hyperparameters and this run's, or None.

    Args:
        saved: the checkpoint's ``hyper_parameters``.
        current: this module's ``hparams``.
    """

    def normal(key, value):
        if key == "model_kwargs":
            return {k: v for k, v in (value or {}).items() if k not in NON_ARCHITECTURE_MODEL_KWARGS}
        if key == "img_size" and not isinstance(value, int) and value is not None:
            return list(value)
        return value

    for key in ARCHITECTURE_HPARAMS:
        if key not in saved or (key == "class_names" and (saved[key] is None or current.get(key) is None)):
            continue  # older checkpoints, or no names on one side: the weights' shapes still get checked
        was, now = normal(key, saved[key]), normal(key, current.get(key))
        if was != now:
            return f"{key} is {was!r} in the checkpoint but {now!r} here"
    return None


class ImageClassifier(TrainEvalFormsMixin, L.LightningModule):
    """Image classification with a registry model (``model_name`` + ``model_kwargs``).

    ``num_classes``, ``img_size`` and ``in_chans`` are normally linked from the data module by the CLI.

    Args:
        model_name: a name from :func:`vir_lightning.list_models`.
        model_kwargs: overrides for the model (e.g. ``decay: 2d``, ``drop_path_rate: 0.1``).
        num_classes, img_size, in_chans: set by the data (CLI links).
        optimizer: optimizer factory (default AdamW 1e-3, wd 0.05); parameter groups exclude biases,
            norms, LayerScale, position embedding and class token from weight decay.
        lr_scheduler: a scheduler factory stepped per epoch; ``None`` (default) = per-step linear
            warmup for ``warmup_epochs`` from ``warmup_lr``, then cosine down to ``min_lr``, held
            for the last ``cooldown_epochs``.
        label_smoothing: label smoothing of the (soft-target) cross-entropy.
        mixup_alpha, cutmix_alpha, mixup_prob, mixup_switch_prob: batch Mixup/CutMix (off at 0).
        layer_decay: layer-wise lr decay for fine-tuning (e.g. 0.65); ``None`` = off.
        train_mode, train_chunk_size: retention form of the training steps. ``None`` (default) =
            the ``retention_mode`` (and ``chunk_size``) that ``model_kwargs`` sets, else ``"auto"``: parallel up to the
            measured crossover, chunkwise beyond (its backward pass keeps only q, k, v, so training
            memory grows linearly with the image). ``"parallel"``/``"chunkwise"``/``"recurrent"``
            force a form; gradients are identical in all of them.
        grad_checkpointing: recompute every retention block in the backward pass instead of
            keeping its activations (the model's ``set_grad_checkpointing``): less memory, about
            one more forward pass of time, identical gradients.
        compile: run the model through ``torch.compile`` (the first steps compile; a change of
            retention form recompiles once). Checkpoints and weights are unchanged.
        eval_mode, eval_chunk_size: retention form used by validate/test/predict (default ``"auto"``;
            ``"streaming"`` for images larger than memory allows). Results are identical in all forms.
        pretrained: weights to start from (Lightning checkpoint or plain state_dict, tensors only);
            another resolution is fine (position embedding resized), another head size is
            re-initialised, anything else that does not fit raises.
        class_names: names for predictions (linked from the data).
    """

    #: The metrics it logs (fnmatch patterns; ``train/loss`` also as ``_step`` and ``_epoch``), which
    #: ``grid --dry-run`` checks a spec's metric names against. Kept beside the ``self.log`` calls.
    LOGGED_METRICS = (
        "train/loss*",
        "train/acc1",
        "val/loss",
        "val/acc1",
        "val/acc5",
        "test/loss",
        "test/acc1",
        "test/acc5",
    )

    def __init__(
        self,
        model_name: str = "vir_nano_patch4_28",
        model_kwargs: dict | None = None,
        num_classes: int = 1000,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_epochs: float = 0.0,
        warmup_lr: float = 1e-6,
        min_lr: float = 1e-5,
        cooldown_epochs: float = 0.0,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        layer_decay: float | None = None,
        train_mode: str | None = None,  # a TrainForm; str so that check_form's message reaches the CLI user
        train_chunk_size: int | None = None,
        grad_checkpointing: bool = False,
        compile: bool = False,
        eval_mode: str = AUTO,  # a RetentionForm (str: see train_mode)
        eval_chunk_size: int | None = None,
        pretrained: str | None = None,
        class_names: list[str] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        linked = sorted({"num_classes", "img_size", "in_chans"} & set(model_kwargs or {}))
        if linked:
            raise ValueError(
                f"model_kwargs sets {', '.join(linked)}, which the data sets (its image size, classes and"
                " channels); drop them from model_kwargs and set them on the data, e.g."
                " --data.init_args.img_size"
            )
        size = img_size if isinstance(img_size, int) else tuple(img_size)
        self.model = create_model(
            model_name, num_classes=num_classes, img_size=size, in_chans=in_chans, **(model_kwargs or {})
        )
        if train_mode is None:  # the model's own form, when model_kwargs chose one (streaming is inference-only)
            own = model_kwargs or {}
            train_mode, own_chunk_size = whole_image_form(own.get("retention_mode", AUTO), own.get("chunk_size"))
            if train_chunk_size is None:
                train_chunk_size = own_chunk_size
        # checks both forms (the error names the option) and refuses a form the model lacks
        self.set_train_eval_forms(train_mode, train_chunk_size, eval_mode, eval_chunk_size)
        if grad_checkpointing is not False:
            if not hasattr(self.model, "set_grad_checkpointing"):
                raise ValueError(
                    f"grad_checkpointing=True: {model_name} cannot checkpoint its blocks;"
                    " leave grad_checkpointing unset"
                )
            self.model.set_grad_checkpointing(grad_checkpointing)
        if not isinstance(compile, bool):
            raise ValueError(f"compile={compile!r}; expected true or false")
        # Kept out of the module tree (a plain attribute), so state_dict keys stay "model.*".
        self.__dict__["_run_model"] = torch.compile(self.model) if compile else self.model
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.mixup = None
        self._batches = _DecodedBatches()
        if mixup_alpha > 0 or cutmix_alpha > 0:
            from ..data.augment import MixupCutmix

            self.mixup = MixupCutmix(
                num_classes,
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                switch_prob=mixup_switch_prob,
                prob=mixup_prob,
                label_smoothing=label_smoothing,
            )
        top5 = min(5, num_classes)
        self.train_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.test_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        if pretrained:
            self.load_report = load_weights(self.model, read_state_dict(pretrained), source=pretrained)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._run_model(images)

    # -- what travels with the checkpoint -----------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the data's normalisation, channels and image size (``checkpoint["preprocessing"]``),
        so ``predict``, ``predict-large`` and the exports use what the model was trained with."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if hasattr(datamodule, "preprocessing"):
            checkpoint["preprocessing"] = datamodule.preprocessing()

    # -- training ------------------------------------------------------------------------------

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Reseed per step so drop path / mixup draws depend only on (seed, step, rank): a fit
        # resumed from a checkpoint replays exactly what an uninterrupted fit does.
        base = int(os.environ.get("PL_GLOBAL_SEED", 0))
        torch.manual_seed((base * 1_000_003 + self.global_step) * 64 + self.global_rank)

    def on_train_epoch_start(self) -> None:
        self.use_train_form()
        self._batches.start("train")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        if not self._batches.count("train", batch):  # every image undecodable and skipped (skip_bad_images)
            if self.trainer.world_size == 1:
                return None  # Lightning skips the optimizer step
            # Under DDP every rank must run backward (its gradient all-reduce): a zero loss tied to
            # the parameters keeps the ranks in step while contributing nothing.
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        images, targets = batch
        if self.mixup is not None:
            images, soft_targets = self.mixup(images, targets)
            loss = F.cross_entropy(self(images), soft_targets)
        else:
            logits = self(images)
            loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
            self.train_acc1(logits, targets)
            self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=images.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        self._batches.require("train")

    # -- evaluation ------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self.use_eval_form()
        self._batches.start("val")

    def on_validation_epoch_end(self) -> None:
        self.use_train_form()
        self._batches.require("val")

    def on_test_epoch_start(self) -> None:
        self.use_eval_form()
        self._batches.start("test")

    def on_test_epoch_end(self) -> None:
        self._batches.require("test")

    def on_predict_epoch_start(self) -> None:
        self.use_eval_form()

    def _evaluate(self, batch, stage: str) -> torch.Tensor | None:
        """Log the batch's loss and accuracy; returns which images were classified right (B bools)."""
        if not self._batches.count(stage, batch):  # every image undecodable and skipped (skip_bad_images)
            return None
        images, targets = batch
        logits = self(images)
        acc1, acc5 = (self.val_acc1, self.val_acc5) if stage == "val" else (self.test_acc1, self.test_acc5)
        acc1(logits, targets)
        acc5(logits, targets)
        size = images.shape[0]
        self.log(f"{stage}/loss", F.cross_entropy(logits, targets), on_epoch=True, batch_size=size, sync_dist=True)
        self.log(f"{stage}/acc1", acc1, on_epoch=True, prog_bar=True, batch_size=size)
        self.log(f"{stage}/acc5", acc5, on_epoch=True, batch_size=size)
        return logits.argmax(-1) == targets

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        # Per-image outcomes, for callbacks that break accuracy down (ObjectPositionBreakdown).
        return self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> dict | None:
        if batch is None:  # every image of the batch was undecodable and skipped (skip_bad_images)
            return None
        images, sample_index = batch
        probs = self(images).softmax(-1)
        top = probs.topk(min(5, probs.shape[-1]), dim=-1)
        return {"index": sample_index, "classes": top.indices, "probs": top.values}

    # -- optimisation ------------------------------------------------------------------------------

    def configure_optimizers(self):
        groups = param_groups(self.model, self.hparams.layer_decay)
        optimizer = self.optimizer_factory(groups)
        base_lr = optimizer.defaults["lr"]
        for group in optimizer.param_groups:
            group["lr"] = base_lr * group.get("lr_scale", 1.0)
        if self.scheduler_factory is not None:
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
            }
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        steps_per_epoch = max(1, total // epochs)
        warmup = round(self.hparams.warmup_epochs * steps_per_epoch)
        cooldown = round(self.hparams.cooldown_epochs * steps_per_epoch)
        scheduler = warmup_cosine(optimizer, total, warmup, self.hparams.warmup_lr, self.hparams.min_lr, cooldown)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
