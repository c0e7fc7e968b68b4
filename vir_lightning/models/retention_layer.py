"""Multi-head retention (MHR): the token mixer of ViR and H-ViR."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..retention import (
    AUTO,
    PARALLEL,
    STREAMING,
    OpForm,
    RetentionForm,
    check_backend,
    check_form,
    decay_rates_for,
    retention,
    retention_decay_matrix,
    retention_step,
    whole_image_form,
)
from ..retention.backends import AUTO_BACKEND


class MultiHeadRetention(nn.Module):
    """Fused qkv projection → retention per head → concatenated heads → output projection.

    q is scaled by head_dim^−½; there is no gate, GroupNorm or rotary embedding (docs/design/method.md §3).
    The decay rates are fixed (not learned) and are not part of the state_dict.

    Args:
        dim: model width, divisible by ``num_heads``.
        num_heads: number of heads.
        decay_schedule: ``"vir"`` or ``"retnet"`` (see :func:`decay_rates_for`).
        qkv_bias: bias on the fused qkv projection.
        mode: ``"parallel"``, ``"recurrent"`` or ``"chunkwise"`` (switchable at run time).
        chunk_size: chunkwise chunk size (tokens in 1D, grid rows in 2D); ``None`` = default.
        directions: 2D only — 1, 2 or 4 (see :func:`vir_lightning.retention.retention`).
        softmax_retention: the authors' released *ablation* form ``softmax((QKᵀ/√d) ⊙ D) V``.
            Future positions get logit 0 rather than −∞, so it is neither causal nor equal to
            the recurrent/chunkwise forms; it therefore runs in parallel mode only.
        backend: the retention op's implementation, ``"auto"`` (fused kernels on CUDA where
            installed, else torch), ``"torch"``, ``"triton"`` or ``"fla"`` (see
            :mod:`vir_lightning.retention.backends`); switchable with :meth:`set_backend`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        decay_schedule: str = "vir",
        qkv_bias: bool = True,
        mode: OpForm = PARALLEL,
        chunk_size: int | None = None,
        directions: int = 1,
        softmax_retention: bool = False,
        backend: str = AUTO_BACKEND,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.decay_rates = decay_rates_for(decay_schedule, num_heads)
        self.directions = directions
        self.softmax_retention = softmax_retention
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self._rates_cache: dict[tuple, Tensor] = {}
        self.set_mode(mode, chunk_size)
        self.set_backend(backend)

    def set_mode(self, mode: OpForm, chunk_size: int | None = None) -> None:
        """Switch between the three exactly equivalent forms (and set the chunk size).

        The form is not checked here: the model's constructor and ``set_retention_mode`` check it
        (:func:`~vir_lightning.retention.check_form`), and the op checks its arguments on every call.
        With ``softmax_retention`` only ``"parallel"`` exists; ``"auto"`` then always means parallel.
        """
        if self.softmax_retention and mode not in (PARALLEL, AUTO):
            raise ValueError(
                f"mode={mode!r} is impossible with softmax_retention=True: the softmax variant has no"
                " recurrent or chunkwise form; use mode='parallel' or softmax_retention=False"
            )
        self.mode, self.chunk_size = mode, chunk_size

    def set_backend(self, backend: str) -> None:
        """Choose the retention op's implementation (checked here; whether it can run a call is
        decided per call by the device, dtype and decay, with one error naming the alternatives)."""
        self.backend = check_backend(backend)

    def rates(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The decay rates as a tensor on ``device``: float64 for float64 inputs, else float32."""
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        key = (device, dtype)
        if key not in self._rates_cache:
            self._rates_cache[key] = torch.tensor(self.decay_rates, dtype=dtype, device=device)
        return self._rates_cache[key]

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: (B, N, dim) → q, k, v, each (B, H, N, head_dim)."""
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def _merge_heads(self, out: Tensor) -> Tensor:
        """(B, H, N, head_dim) → the output projection of the concatenated heads, (B, N, dim)."""
        batch, heads, tokens, head_dim = out.shape
        # explicit width: a -1 cannot be inferred from an empty batch
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, heads * head_dim))

    def forward_step(
        self, x: Tensor, state: Tensor | None, grid_cols: int | None = None, class_token: bool = False
    ) -> tuple[Tensor, Tensor]:
        """One segment of the token sequence, continuing from ``state`` (see :func:`retention_step`):
        x (B, n, dim) → (output (B, n, dim), the state after the segment)."""
        q, k, v = self._heads(x)
        out, state = retention_step(
            q,
            k,
            v,
            self.decay_rates,
            state,
            grid_cols=grid_cols,
            class_token=class_token,
            chunk_size=self.chunk_size,
            scale=self.scale,
            backend=self.backend,
        )
        return self._merge_heads(out), state

    def forward(self, x: Tensor, grid_shape: tuple[int, int] | None = None, class_token: bool = False) -> Tensor:
        """x: (B, N, dim) → (B, N, dim). ``grid_shape``/``class_token`` select the 2D decay."""
        tokens = x.shape[1]
        q, k, v = self._heads(x)
        directions = self.directions if grid_shape is not None else 1
        if self.softmax_retention:
            decay = retention_decay_matrix(
                tokens,
                self.rates(x.device, x.dtype),
                grid_shape=grid_shape,
                class_token=class_token,
                directions=directions,
            )
            out = ((q @ k.transpose(-1, -2)) * (decay.to(q.dtype) * self.scale)).softmax(dim=-1) @ v
        else:
            out = retention(  # the rates as Python floats: no device read per call
                q,
                k,
                v,
                self.decay_rates,
                mode=self.mode,
                chunk_size=self.chunk_size,
                grid_shape=grid_shape,
                class_token=class_token,
                directions=directions,
                scale=self.scale,
                backend=self.backend,
            )
        return self._merge_heads(out)

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, mode={self.mode!r}, chunk_size={self.chunk_size}, "
            f"directions={self.directions}, softmax_retention={self.softmax_retention}, backend={self.backend!r}"
        )


class RetentionModeMixin:
    """``set_retention_mode`` / ``retention_mode`` for any model built from :class:`MultiHeadRetention`."""

    def retention_layers(self) -> list[MultiHeadRetention]:
        return [m for m in self.modules() if isinstance(m, MultiHeadRetention)]

    #: Band height (patch rows) while in streaming mode (``None`` = the default); see
    #: :meth:`set_retention_mode`. ``streaming`` is False in every other mode.
    streaming: bool = False
    band_rows: int | None = None

    def set_retention_mode(self, mode: RetentionForm, chunk_size: int | None = None) -> None:
        """Switch every retention layer to ``mode`` (and ``chunk_size``). Outputs stay equal.

        ``"streaming"`` (models that support it) pushes bands of ``chunk_size`` patch rows through
        every layer in turn; the layers then run their retention one band at a time from a carried
        state (and take :func:`~vir_lightning.retention.whole_image_form` for anything else).
        """
        check_form(mode, chunk_size)  # before touching any layer, so a bad call changes nothing
        if mode == STREAMING:
            self.check_streamable()
        layer_mode, layer_chunk_size = whole_image_form(mode, chunk_size)
        for layer in self.retention_layers():
            layer.set_mode(layer_mode, layer_chunk_size)
        self.streaming = mode == STREAMING
        self.band_rows = chunk_size if self.streaming else None

    def check_streamable(self) -> None:
        """ValueError naming why this model cannot run in streaming mode (the default: it cannot)."""
        raise ValueError(
            f"{type(self).__name__} has no streaming mode: its convolutional stem and stages look at"
            " neighbouring pixel rows (3×3 kernels), so independent bands of rows would need"
            " overlapping margins; use retention_mode 'chunkwise' (linear cost) instead"
        )

    def set_retention_backend(self, backend: str) -> None:
        """Run every retention layer's op on ``backend`` (``"auto"``, ``"torch"``, ``"triton"``,
        ``"fla"``; see :mod:`vir_lightning.retention.backends`). Outputs stay equal to rounding."""
        check_backend(backend)
        for layer in self.retention_layers():
            layer.set_backend(backend)

    @property
    def retention_backend(self) -> str:
        """The retention op's backend; ``"auto"`` for a model without retention."""
        layers = self.retention_layers()
        return layers[0].backend if layers else AUTO_BACKEND

    @property
    def retention_mode(self) -> str:
        """The current form; ``"parallel"`` for a model without retention (the ViT baseline)."""
        if self.streaming:
            return STREAMING
        layers = self.retention_layers()
        return layers[0].mode if layers else PARALLEL


class TrainEvalFormsMixin:
    """A retention form for training and one for evaluation, and the switch between them.

    The one home of that switch for the task wrappers around a model held in ``self.model``: the
    Lightning classifier (:class:`~vir_lightning.tasks.ImageClassifier`, from its epoch hooks) and
    the OpenMMLab backbone (``downstream.hvir_backbone.HViRBackbone``, from its ``train()``). It
    imports neither Lightning nor mmengine.
    """

    train_mode: str
    train_chunk_size: int | None
    eval_mode: str
    eval_chunk_size: int | None

    def set_train_eval_forms(
        self, train_mode: str, train_chunk_size: int | None, eval_mode: str, eval_chunk_size: int | None
    ) -> None:
        """Check both forms (the error names the option), keep them, and switch to the training form.

        A form the model lacks is refused here too: streaming for evaluation by the model's
        ``check_streamable``, chunkwise or recurrent with ``softmax_retention`` by its layers.
        """
        check_form(train_mode, train_chunk_size, "train", "train_mode")
        check_form(eval_mode, eval_chunk_size, "model", "eval_mode")
        if eval_mode == STREAMING:
            try:
                self.model.check_streamable()
            except ValueError as error:
                raise ValueError(f"eval_mode: {error}") from None
        self.train_mode, self.train_chunk_size = train_mode, train_chunk_size
        self.eval_mode, self.eval_chunk_size = eval_mode, eval_chunk_size
        self.use_train_form()

    def use_train_form(self) -> None:
        """Switch the model to the training form."""
        self.model.set_retention_mode(self.train_mode, self.train_chunk_size)

    def use_eval_form(self) -> None:
        """Switch the model to the evaluation form (validation, test, predict, inference)."""
        self.model.set_retention_mode(self.eval_mode, self.eval_chunk_size)

    def use_form_for(self, training: bool) -> None:
        """The training form when ``training``, else the evaluation form."""
        if training:
            self.use_train_form()
        else:
            self.use_eval_form()
