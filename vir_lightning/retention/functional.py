"""``retention(q, k, v, decay_rates, ...)``: the public, validated entry point to the retention op."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from . import modes
from .autograd import ChunkwiseSpec, chunkwise_retention
from .backends import AUTO_BACKEND, check_backend, resolve_backend
from .forms import AUTO, CHUNKWISE, EXACT_FORMS, PARALLEL, check_form
from .forms import check_positive_int as _positive_int

__all__ = [
    "AUTO_PARALLEL_MAX_TOKENS",
    "MODES",
    "check_mode",
    "default_chunk_size",
    "resolve_mode",
    "retention",
    "retention_decay_matrix",
    "retention_step",
    "tile_shape",
]

#: The op's exact forms (the former name of :data:`~.forms.EXACT_FORMS`, kept for existing imports).
MODES = EXACT_FORMS

#: ``mode="auto"`` runs the parallel form up to this many tokens and chunkwise beyond, per device
#: type, decay and pass: the longest length at which parallel was still at least as fast as
#: chunkwise (default chunk), measured on 2 CPU cores, fp32, batch 2, 6 heads of 64 with
#: ``python -m vir_lightning bench-retention --modes parallel chunkwise --batch 2 --heads 6
#: --tokens 64 144 196 256 400 576 784 1024 1600 2304 --crossover [--task train]`` (CSVs in
#: docs/bench/). Inference — 1D: 0.9 vs 1.0 ms at 256 tokens, 2.2 vs 1.7 ms at 400; 2D (16×16 tiles):
#: 21.0 vs 22.0 ms at 784, 61.2 vs 43.7 ms at 1024. Training (forward + the lean backward) — 1D:
#: 8.9 vs 9.4 ms at 256, 15.4 vs 14.7 ms at 400; 2D: 283 vs 311 ms at 1600, 566 vs 311 ms at 2304.
#: Devices without an entry use the CPU's until measured there: rerun that command on the device
#: and add one.
AUTO_PARALLEL_MAX_TOKENS = {"cpu": {"1d": 256, "2d": 784, "1d_train": 256, "2d_train": 1600}}

#: Chunkwise defaults in tokens per chunk, measured on 2 CPU cores (docs/results/throughput.md, "The retention op").
#: 1D: a ViR-S layer at 4,097 tokens took the same time (±4%) for chunks of 32–128; 64 halves the
#: score blocks' memory of 128. 2D chunks are tiles of about 256 tokens: whole rows while the grid
#: is at most DEFAULT_TILE_SIDE_2D columns wide, 16-row tiles of ~256 tokens beyond (a fixed tile keeps the cost
#: linear in the tokens; whole-row chunks of a wide grid grew as N·√N). 16×16 tiles were 1.5–2.4×
#: faster than 32×32 ones (64², 128², 50×84 and 25×42 grids, inference and training) and no
#: slower than 8×8 or 16×32 ones beyond noise.
DEFAULT_CHUNK_TOKENS_1D = 64
DEFAULT_CHUNK_TOKENS_2D = 256
DEFAULT_TILE_SIDE_2D = 16


def _balanced(length: int, most: int) -> int:
    """The smallest piece that cuts ``length`` into as few pieces of at most ``most`` as possible
    (40 → 20 + 20 rather than 32 + 8: a ragged last tile is padded, so it costs a whole one)."""
    return -(-length // -(-length // most))


def default_chunk_size(num_tokens: int, grid_shape: tuple[int, int] | None = None) -> int:
    """Chunk size used when ``chunk_size=None``: tokens per chunk in 1D, grid rows per tile in 2D."""
    if grid_shape is None:
        return max(1, min(DEFAULT_CHUNK_TOKENS_1D, num_tokens))
    rows, cols = grid_shape
    if cols > DEFAULT_TILE_SIDE_2D:
        return _balanced(rows, DEFAULT_TILE_SIDE_2D)
    return max(1, DEFAULT_CHUNK_TOKENS_2D // cols)


def tile_shape(grid_shape: tuple[int, int], chunk_size: int | None) -> tuple[int, int]:
    """(rows, cols) of a 2D chunkwise tile: ``chunk_size`` (or the default) rows, and as many
    columns as make about :data:`DEFAULT_CHUNK_TOKENS_2D` tokens (split evenly), at most the grid's width."""
    if not isinstance(grid_shape, Sequence) or len(grid_shape) != 2:
        raise ValueError(f"grid_shape={grid_shape!r} is invalid; expected (rows, cols)")
    grid_shape = (_positive_int("grid_shape rows", grid_shape[0]), _positive_int("grid_shape cols", grid_shape[1]))
    if chunk_size is not None:
        _positive_int("chunk_size", chunk_size)
    rows = min(chunk_size or default_chunk_size(grid_shape[0] * grid_shape[1], grid_shape), grid_shape[0])
    return rows, _balanced(grid_shape[1], max(1, DEFAULT_CHUNK_TOKENS_2D // rows))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Decays (and recurrent/chunkwise states) never live in a 16-bit type: γ^n needs the range.
    return torch.float64 if dtype == torch.float64 else torch.float32


def resolve_mode(mode: str, num_tokens: int, grid_shape, device: torch.device, training: bool = False) -> str:
    """The exact form ``mode`` stands for: itself, or for ``"auto"`` the faster one at this length
    (``training``: the forward and backward pass together)."""
    if mode != AUTO:
        return mode
    table = AUTO_PARALLEL_MAX_TOKENS.get(device.type, AUTO_PARALLEL_MAX_TOKENS["cpu"])
    decay = "1d" if grid_shape is None else "2d"
    limit = table.get(f"{decay}_train", table[decay]) if training else table[decay]
    return PARALLEL if num_tokens <= limit else CHUNKWISE


def check_mode(mode: str, chunk_size: int | None) -> None:
    """ValueError unless ``mode`` is one of the op's forms (or ``"auto"``) and ``chunk_size`` is None
    or a positive integer: :func:`~.forms.check_form` with :data:`~.forms.OP_FORMS`."""
    check_form(mode, chunk_size, "op")


def _former_cls_token(cls_token, class_token) -> bool:
    """``class_token`` from a call that still passed its former name ``cls_token`` (FutureWarning)."""
    warnings.warn(
        "the retention flag cls_token=... is renamed class_token (timm's name for the flag; cls_token"
        " is the model's parameter); cls_token still works but will be removed",
        FutureWarning,
        stacklevel=3,
    )
    if class_token is not False and class_token is not cls_token:
        raise ValueError(
            f"class_token={class_token!r} and cls_token={cls_token!r}: cls_token is the former name"
            " of class_token; pass class_token only"
        )
    return cls_token


def _validate(q, k, v, decay_rates, mode, chunk_size, grid_shape, class_token, directions) -> tuple[float, ...]:
    """Check every argument; return ``decay_rates`` as a tuple of Python floats."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} has shape {shape}; expected (batch, heads, tokens, head_dim)")
        if not t.is_floating_point():
            raise ValueError(f"{name} has dtype {t.dtype}; expected a floating-point tensor")
    if k.shape != q.shape:
        raise ValueError(f"k has shape {tuple(k.shape)}; expected the shape of q, {tuple(q.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"v has shape {tuple(v.shape)}; expected (batch, heads, tokens) = {tuple(q.shape[:3])}"
            " like q (its last dim may differ)"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype or k.device != q.device or v.device != q.device:
        raise ValueError(
            f"q, k, v must share dtype and device; got {q.dtype}/{q.device}, {k.dtype}/{k.device}, {v.dtype}/{v.device}"
        )
    batch, heads, tokens, _ = q.shape

    decay_rates = _rates_as_floats(decay_rates, heads)

    check_form(mode, chunk_size, "op")
    _check_directions(directions)
    if not isinstance(class_token, bool):
        raise ValueError(f"class_token={class_token!r}; expected True or False")

    if grid_shape is None:
        if class_token:
            raise ValueError(
                "class_token=True needs grid_shape: in 1D the class token is an ordinary token at its"
                " raster position, so pass class_token only with a 2D grid_shape=(rows, cols)"
            )
        if directions != 1:
            raise ValueError(f"directions={directions} needs a 2D grid_shape=(rows, cols); 1D retention is causal")
    else:
        if not isinstance(grid_shape, Sequence) or len(grid_shape) != 2:
            raise ValueError(f"grid_shape={grid_shape!r} is invalid; expected (rows, cols)")
        rows = _positive_int("grid_shape rows", grid_shape[0])
        cols = _positive_int("grid_shape cols", grid_shape[1])
        expected = rows * cols + int(class_token)
        if tokens != expected:
            raise ValueError(
                f"grid_shape={tuple(grid_shape)} with class_token={class_token} means {expected} tokens,"
                f" but q has {tokens} (tokens must be rows·cols, plus 1 for a class token)"
            )
        if class_token and directions != 1:
            raise ValueError(
                f"directions={directions} with class_token=True is not defined: the class token lives"
                " below the grid and only the upper-left quadrant (directions=1) reaches it;"
                " use directions=1 or drop the class token (e.g. average pooling)"
            )
    return decay_rates


def _check_directions(directions) -> None:
    # Compared by type too: ``True in (1, 2, 4)`` and ``2.0 in (1, 2, 4)`` hold in Python.
    if isinstance(directions, bool) or not isinstance(directions, int) or directions not in (1, 2, 4):
        raise ValueError(f"directions={directions!r} is invalid; expected 1, 2 or 4")


def _rates_as_floats(decay_rates, heads: int) -> tuple[float, ...]:
    """The rates as a tuple of Python floats, checked. A sequence of floats (what the model layers
    pass) is checked without touching a device; a tensor costs one read to the host."""
    if isinstance(decay_rates, Tensor):
        if decay_rates.shape != (heads,):
            raise ValueError(
                f"decay_rates has shape {tuple(decay_rates.shape)}; expected ({heads},), one rate per head"
            )
        if not decay_rates.is_floating_point():
            raise ValueError(f"decay_rates has dtype {decay_rates.dtype}; expected floating point")
        if decay_rates.is_meta:
            raise ValueError(
                "decay_rates is a meta tensor: it has no values to read; pass Python floats"
                " (e.g. vir_lightning.retention.decay_rates_for('vir', heads)) or a tensor with data"
            )
        if decay_rates.requires_grad and torch.is_grad_enabled():
            # The rates are read as constants: a learnable tensor would silently get no gradient.
            raise ValueError(
                "decay_rates requires grad, but retention treats the rates as constants and"
                " returns no gradient for them; pass decay_rates.detach() (or Python floats)"
            )
        decay_rates = decay_rates.tolist()
    elif not isinstance(decay_rates, Sequence) or isinstance(decay_rates, str):
        raise ValueError(f"decay_rates={decay_rates!r}; expected a tensor or sequence of {heads} floats")
    if len(decay_rates) != heads:
        raise ValueError(f"decay_rates has {len(decay_rates)} values; expected ({heads},), one rate per head")
    if not all(isinstance(r, float | int) and not isinstance(r, bool) for r in decay_rates):
        kinds = sorted({type(r).__name__ for r in decay_rates})
        raise ValueError(f"decay_rates holds {', '.join(kinds)} values; expected Python floats (or a float tensor)")
    if not all(0 < r < 1 for r in decay_rates):
        raise ValueError(
            f"decay_rates={list(decay_rates)} has values outside the open interval (0, 1);"
            " every rate must satisfy 0 < γ < 1 (see vir_lightning.retention.decay_rates_for)"
        )
    return tuple(float(r) for r in decay_rates)


def retention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    decay_rates: Tensor | Sequence[float],
    *,
    mode: str = PARALLEL,
    chunk_size: int | None = None,
    grid_shape: tuple[int, int] | None = None,
    class_token: bool = False,
    directions: int = 1,
    scale: float = 1.0,
    backend: str = AUTO_BACKEND,
    cls_token: bool | None = None,
) -> Tensor:
    """Multi-head retention: ``O[i] = Σ_j D[i, j] (s·q_i · k_j) v_j`` — no softmax, no normalisation.

    Args:
        q: queries, (batch, heads, tokens, head_dim).
        k: keys, same shape as ``q``.
        v: values, (batch, heads, tokens, value_dim).
        decay_rates: (heads,) rates γ_h in the open interval (0, 1): Python floats, or a float
            tensor with data (read once to the host; constants: one that requires grad is refused).
        mode: ``"parallel"`` (O(N²) memory), ``"recurrent"`` (token by token, O(d²)
            state per head in 1D) or ``"chunkwise"`` (linear cost and memory, training included).
            All give the same result.
            ``"auto"`` picks parallel or chunkwise by the length, from the measured crossover
            :data:`AUTO_PARALLEL_MAX_TOKENS`.
        chunk_size: chunkwise only — tokens per chunk in 1D, grid rows per tile in 2D (the tile is
            as wide as makes about 256 tokens, see :func:`tile_shape`); any positive integer (need
            not divide the length). ``None`` picks :func:`default_chunk_size`.
        grid_shape: ``None`` for 1D raster-causal decay γ^(i−j); ``(rows, cols)`` for the 2D
            upper-left-quadrant Manhattan decay over a raster-ordered patch grid.
        class_token: 2D only — the last token is a class token at (x = cols−1, y = rows).
            (Formerly ``cls_token``, still accepted with a FutureWarning: as in timm, ``class_token``
            is the flag and ``cls_token`` the model's parameter.)
        directions: 2D without class token — 1 quadrant, 2 upper-left + lower-right, 4 = full
            symmetric Manhattan decay γ^(|Δx|+|Δy|); each position pair is counted once.
        scale: s, the factor on q (ViR uses head_dim^−½). Folded into the decay tables in the
            parallel and chunkwise forms, so it costs nothing there.
        backend: which implementation runs the call (:mod:`vir_lightning.retention.backends`):
            ``"torch"`` (the forms above, every device), ``"triton"`` (one fused kernel, CUDA; 1D and
            2D), ``"fla"`` (fla's chunkwise kernel, CUDA, 1D) or ``"auto"``: a fused one on CUDA
            where installed and able, else torch. ``mode`` chooses among the torch forms only.

    Returns:
        (batch, heads, tokens, value_dim), in the dtype of ``q``. Half-precision inputs are computed
        with float32 decays, and with a float32 state in the recurrent and chunkwise modes. In
        chunkwise mode the backward pass keeps only q, k and v and recomputes the rest
        (:mod:`vir_lightning.retention.autograd`). ``decay_rates`` given as Python floats (as the
        model layers do) are never read back from the device. Zero tokens give an empty result in
        every mode; meta tensors give the output's shape.

    Raises:
        ValueError: an argument has the wrong shape, dtype, value or combination, or ``backend``
            cannot run the call (the message names why and the backends that can).
    """
    if cls_token is not None:
        class_token = _former_cls_token(cls_token, class_token)
    rates = _validate(q, k, v, decay_rates, mode, chunk_size, grid_shape, class_token, directions)
    scale = _check_scale(scale)
    backend = resolve_backend(
        check_backend(backend), q.device, q.dtype, grid_shape is None, mode=mode, head_dim=max(q.shape[-1], v.shape[-1])
    )
    if q.shape[2] == 0:  # an empty sequence: an empty result (the scans of the other forms need a token)
        return _empty_output(q, k, v)
    if grid_shape is not None:
        grid_shape = (int(grid_shape[0]), int(grid_shape[1]))
    if backend == "triton":
        from .backends import triton_flash

        log_gamma = modes.log_rates(rates, torch.float32, q.device)
        return triton_flash.retention(q, k, v, log_gamma, scale, grid_shape, class_token, directions)
    if backend == "fla":
        from .backends import fla_chunk

        return fla_chunk.retention(q, k, v, modes.log_rates(rates, torch.float32, q.device), scale)[0]
    mode = resolve_mode(mode, q.shape[2], grid_shape, q.device, training=modes.needs_grad(q, k, v))
    compute_dtype = _compute_dtype(q.dtype)
    log_gamma = modes.log_rates(rates, compute_dtype, q.device)

    # The scale of q is folded into the decay tables where the form has them (free); the
    # recurrent forms scale q itself.
    if mode == PARALLEL:
        (decay,) = modes.cached_tables(
            ("matrix", q.shape[2], grid_shape, class_token, directions, scale),
            log_gamma,
            lambda: (modes.decay_matrix(q.shape[2], log_gamma, grid_shape, class_token, directions) * scale,),
        )
        return modes.parallel(q, k, v, decay)

    if mode == CHUNKWISE:  # computes in log_gamma's dtype; 16-bit inputs are saved as they are
        spec = _chunkwise_spec(q.shape[2], chunk_size, scale, grid_shape, class_token, directions)
        return chunkwise_retention(spec, log_gamma, q, k, v)
    out_dtype = q.dtype
    if q.dtype != compute_dtype:  # 16-bit input: accumulate states in float32
        q, k, v = (t.to(compute_dtype) for t in (q, k, v))
    if scale != 1.0:
        q = q * scale
    if grid_shape is None:
        return modes.recurrent_1d(q, k, v, log_gamma).to(out_dtype)
    quadrant = lambda q_, k_, v_: modes.recurrent_2d(q_, k_, v_, log_gamma, grid_shape, class_token)  # noqa: E731
    if directions == 1:
        out = quadrant(q, k, v)
    else:
        out = modes.multi_direction_2d(quadrant, q, k, v, log_gamma, grid_shape, directions)
    return out.to(out_dtype)


def _empty_output(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(batch, heads, 0, value_dim) for zero tokens, still on autograd's graph of q, k and v."""
    return (q @ k.transpose(-1, -2)) @ v


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
        raise ValueError(f"scale={scale!r} is invalid; expected a positive finite number (e.g. head_dim**-0.5)")
    return float(scale)


def _chunkwise_spec(tokens, chunk_size, scale, grid_shape, class_token=False, directions=1) -> ChunkwiseSpec:
    """The chunk (1D) or tile (2D) the chunkwise form uses for this call."""
    if grid_shape is None:
        return ChunkwiseSpec(chunk_size or default_chunk_size(tokens), scale)
    rows, cols = tile_shape(grid_shape, chunk_size)
    return ChunkwiseSpec(rows, scale, grid_shape, class_token, directions, cols)


def retention_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    decay_rates: Tensor | Sequence[float],
    state: Tensor | None = None,
    *,
    grid_cols: int | None = None,
    class_token: bool = False,
    chunk_size: int | None = None,
    scale: float = 1.0,
    backend: str = AUTO_BACKEND,
) -> tuple[Tensor, Tensor]:
    """One segment of a sequence whose past is carried in ``state``: the streaming form (docs/design/method.md §7).

    Feeding a sequence segment by segment, each call given the state the previous one returned,
    gives exactly what :func:`retention` gives on the whole sequence (any mode), for any cut. The
    segment itself is computed chunkwise.

    - 1D (``grid_cols=None``): the tokens continue the raster sequence; ``state`` is
      R = Σ_{m before} γ^(age) k_mᵀ v_m, (batch, heads, head_dim, value_dim).
    - 2D (``grid_cols=C``): the tokens are whole grid rows (tokens a multiple of C) continuing the
      grid below the rows already seen; ``state`` is the quadrant state of the row just above,
      one d×dv matrix per column, (batch, heads, C, head_dim, value_dim): it grows with the width.
    - 2D with ``class_token=True``: one token, the class token below the last row (it ends the
      sequence; the state is returned unchanged).

    Args:
        q, k, v: (batch, heads, tokens, head_dim / value_dim), as for :func:`retention`.
        decay_rates: (heads,) rates in (0, 1).
        state: the state returned by the previous segment, or ``None`` at the start (zeros).
        grid_cols: ``None`` for 1D decay, else the grid's column count for 2D decay.
        class_token: 2D only: this segment is the class token.
        chunk_size: chunk inside the segment (tokens in 1D, rows in 2D); ``None`` = default.
        scale: the factor on q (ViR uses head_dim^−½).
        backend: ``"torch"``, ``"fla"`` (1D on CUDA) or ``"auto"`` (fla where it can, else torch);
            ``"triton"`` carries no state and is refused (see :func:`retention`).

    Returns:
        ``(out, state)``: out (batch, heads, tokens, value_dim) in q's dtype; the state after the
        segment, in float32 (float64 for float64 inputs) whatever the input dtype.

    An empty segment (zero tokens) returns an empty output and the state unchanged.

    Raises:
        ValueError: bad shapes, dtypes, rates, or a state that does not fit the segment (shape,
            dtype or device).
    """
    tokens = q.shape[2] if isinstance(q, Tensor) and q.dim() == 4 else 0
    if not isinstance(class_token, bool):
        raise ValueError(f"class_token={class_token!r}; expected True or False")
    if grid_cols is not None:
        grid_cols = _positive_int("grid_cols", grid_cols)
        if class_token and tokens != 1:
            raise ValueError(f"class_token=True takes one token (the class token); q has {tokens}")
        if not class_token and tokens % grid_cols:
            raise ValueError(
                f"a 2D segment holds whole rows: {tokens} tokens is not a multiple of grid_cols={grid_cols}"
            )
    elif class_token:
        raise ValueError("class_token=True needs grid_cols: in 1D the class token is just the next token")
    # An empty segment (zero rows) changes nothing; it is checked like a 1D one.
    grid_shape = None if grid_cols is None or class_token or tokens == 0 else (tokens // grid_cols, grid_cols)
    rates = _validate(q, k, v, decay_rates, CHUNKWISE, chunk_size, grid_shape, False, 1)
    scale = _check_scale(scale)
    backend = resolve_backend(
        check_backend(backend), q.device, q.dtype, grid_cols is None, step=True, head_dim=max(q.shape[-1], v.shape[-1])
    )
    compute_dtype = _compute_dtype(q.dtype)
    batch, heads, _, head_dim = q.shape
    state_shape = (
        (batch, heads, head_dim, v.shape[-1]) if grid_cols is None else (batch, heads, grid_cols, head_dim, v.shape[-1])
    )
    if state is None:
        state = q.new_zeros(state_shape, dtype=compute_dtype)
    elif (
        not isinstance(state, Tensor)
        or tuple(state.shape) != state_shape
        or state.dtype != compute_dtype
        or state.device != q.device
    ):
        got = (
            (tuple(state.shape), state.dtype, str(state.device)) if isinstance(state, Tensor) else type(state).__name__
        )
        raise ValueError(
            f"state is {got}; expected shape {state_shape}, dtype {compute_dtype} on {q.device}:"
            " pass the state the previous segment returned (or None to start)"
        )
    if tokens == 0:
        return _empty_output(q, k, v), state
    log_gamma = modes.log_rates(rates, compute_dtype, q.device)
    if backend == "fla":
        from .backends import fla_chunk

        return fla_chunk.retention(q, k, v, log_gamma, scale, initial_state=state, output_final_state=True)
    out_dtype = q.dtype
    q, k, v = (t.to(compute_dtype) for t in (q, k, v))
    if class_token:
        out = modes.quadrant_class_token(q * scale, k, v, log_gamma, state)
    elif grid_cols is None:
        spec = _chunkwise_spec(tokens, chunk_size, scale, None)
        out, state = modes.chunkwise_1d(q, k, v, log_gamma, spec.chunk, scale, initial_state=state, return_state=True)
    else:
        spec = _chunkwise_spec(tokens, chunk_size, scale, grid_shape)
        out, state = modes.chunkwise_2d(
            q,
            k,
            v,
            log_gamma,
            grid_shape,
            False,
            spec.chunk,
            initial_state=state,
            return_state=True,
            cols_per_chunk=spec.tile_cols,
            scale=scale,
        )
    return out.to(out_dtype), state


def retention_decay_matrix(
    num_tokens: int,
    decay_rates: Tensor | Sequence[float],
    *,
    grid_shape: tuple[int, int] | None = None,
    class_token: bool = False,
    directions: int = 1,
    cls_token: bool | None = None,
) -> Tensor:
    """The (heads, N, N) decay matrix D of the parallel form, in float32 (float64 for float64 rates).

    Used by the authors' softmax ablation, ``softmax((Q Kᵀ/√d) ⊙ D) V``, and handy for plotting masks.

    Args:
        num_tokens: N, the sequence length (rows·cols, plus 1 with ``class_token``, in 2D).
        decay_rates: (heads,) rates γ_h in (0, 1): a floating-point tensor (its values are not read
            back from the device, so they are not checked: the softmax ablation calls this per
            layer) or a sequence of Python floats (checked).
        grid_shape, class_token, directions: as for :func:`retention` (``cls_token``: the former
            name of ``class_token``, with a FutureWarning).

    Raises:
        ValueError: ``num_tokens`` is negative or does not fit ``grid_shape``, the rates are not
            one per head, or an option is invalid (the same checks as :func:`retention`).
    """
    if cls_token is not None:
        class_token = _former_cls_token(cls_token, class_token)
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, numbers.Integral) or num_tokens < 0:
        raise ValueError(f"num_tokens={num_tokens!r} is invalid; expected a non-negative integer")
    if isinstance(decay_rates, Tensor):
        if decay_rates.dim() != 1 or not decay_rates.is_floating_point():
            raise ValueError(
                f"decay_rates has shape {tuple(decay_rates.shape)} and dtype {decay_rates.dtype};"
                " expected a floating-point (heads,) tensor"
            )
        heads, rates = decay_rates.shape[0], None
    elif isinstance(decay_rates, Sequence) and not isinstance(decay_rates, str):
        rates = _rates_as_floats(decay_rates, len(decay_rates))
        heads = len(rates)
    else:
        raise ValueError(f"decay_rates={decay_rates!r}; expected a (heads,) float tensor or a sequence of floats")
    # The op's own checks of the options, on an empty stand-in of the right token count (no data).
    probe = torch.empty(0, heads, int(num_tokens), 0, device="meta")
    try:
        _validate(probe, probe, probe, [0.5] * heads, PARALLEL, None, grid_shape, class_token, directions)
    except ValueError as err:  # the stand-in's name is not the caller's
        raise ValueError(str(err).replace("but q has", "but num_tokens is")) from None
    if grid_shape is not None:
        grid_shape = (int(grid_shape[0]), int(grid_shape[1]))
    if rates is not None:
        log_gamma = modes.log_rates(rates, torch.float32, torch.device("cpu"))
    else:
        log_gamma = torch.log(decay_rates.to(_compute_dtype(decay_rates.dtype)))
    return modes.decay_matrix(int(num_tokens), log_gamma, grid_shape, class_token, directions)
