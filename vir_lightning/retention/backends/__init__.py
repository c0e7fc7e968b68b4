"""Which implementation runs a retention call: the backends, what each supports, and ``"auto"``.

- ``"torch"``: the package's own exact forms in plain PyTorch (parallel, recurrent, chunkwise; the
  lean chunkwise backward). Every device, dtype and case; the reference for the others.
- ``"triton"``: one fused flash-style Triton kernel (:mod:`.triton_flash`), 1D and 2D (directions
  1/2/4, class token), forward and backward; CUDA, or the CPU under ``TRITON_INTERPRET=1`` (slow:
  for tests). fp16, bf16 and fp32. Whole sequences only (no streaming state).
- ``"fla"``: flash-linear-attention's chunkwise kernel (:mod:`.fla_chunk`); 1D only, CUDA only,
  whole sequences and streaming steps.
- ``"auto"`` (the default): on CUDA, the first of fla (1D, eager) and triton that is installed and
  supports the call, else torch; on every other device torch. It never fails for want of a backend.
  fla's kernels take fp32 products in TF32 (Triton's default; they set no precision), so for fp32
  inputs ``"auto"`` takes fla only where TF32 is allowed (``torch.backends.cuda.matmul.allow_tf32``).

The ``mode`` of a call (parallel / recurrent / chunkwise / auto) chooses among the torch backend's
forms. The fused backends compute the same function in their own way, so they ignore it, except that
``mode="recurrent"`` (a reference form only torch has) makes ``"auto"`` choose torch.

Nothing here imports Triton or fla until a fused backend is asked for on a device that can run it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import torch

from ..forms import AUTO, RECURRENT

#: The backend that picks one per call (the same word as the form ``"auto"``, another vocabulary).
AUTO_BACKEND = "auto"
BACKENDS = (AUTO_BACKEND, "torch", "triton", "fla")
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: The Triton kernel keeps a query tile, a key tile and a value tile of the head dims in shared
#: memory: beyond these head (or value) dims a launch would not fit an H100's 227 KB (measured by
#: compiling for sm_90: fp32 at 128 fits, at 256 it does not; bf16 at 256 fits).
_TRITON_MAX_HEAD_DIM = {torch.float32: 128, torch.float16: 256, torch.bfloat16: 256}


def check_backend(backend) -> str:
    """``backend`` if it names a backend, else ValueError listing them."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; expected one of {BACKENDS}")
    return backend


_IMPORTABLE: dict[str, bool] = {}


# assume_constant_result: under torch.compile the answer is taken once at trace time, as a constant,
# instead of tracing the import machinery (which would break the graph).
@torch.compiler.assume_constant_result
def _installed(module: str) -> bool:
    """Whether ``module`` imports (checked once; fla is imported for real since it needs Triton too)."""
    if module not in _IMPORTABLE:
        try:
            _IMPORTABLE[module] = (
                importlib.util.find_spec(module.split(".")[0]) is not None
                and importlib.import_module(module) is not None
            )
        except Exception:  # noqa: BLE001 - any failure to import means the backend is not usable here
            _IMPORTABLE[module] = False
    return _IMPORTABLE[module]


@torch.compiler.assume_constant_result
def triton_interpreted() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unsupported(
    backend: str, device: torch.device, dtype: torch.dtype, one_d: bool, step: bool, head_dim: int = 64
) -> str | None:
    """Why ``backend`` cannot run a call with these properties, or None if it can.

    ``one_d``: 1D decay (no grid); ``step``: a streaming segment that carries a state; ``head_dim``:
    the larger of the query/key and value dims.
    """
    if backend == "torch":
        return None
    if dtype not in _FUSED_DTYPES:
        return f"it takes float16, bfloat16 or float32 inputs, not {dtype}"
    if backend == "triton":
        if step:
            return "its flash-style kernel computes whole sequences and carries no state between segments"
        if device.type != "cuda" and not (device.type == "cpu" and triton_interpreted()):
            return f"it runs on CUDA devices (or the CPU under TRITON_INTERPRET=1), not on {device.type}"
        if head_dim > _TRITON_MAX_HEAD_DIM[dtype]:
            return f"its kernel takes head dims up to {_TRITON_MAX_HEAD_DIM[dtype]} in {dtype}, not {head_dim}"
        if not _installed("triton"):
            return "Triton is not installed (pip install 'vir_lightning[gpu]')"
        return None
    if not one_d:
        return "it computes 1D decay only (grid_shape=None); 2D decay runs on 'triton' or 'torch'"
    if device.type != "cuda":
        return f"its kernels run on CUDA devices only, not on {device.type}"
    if not _installed("fla.ops.simple_gla"):
        return "fla-core is not installed or does not import (pip install 'vir_lightning[gpu]')"
    return None


def resolve_backend(
    backend: str,
    device: torch.device,
    dtype: torch.dtype,
    one_d: bool,
    step: bool = False,
    mode: str = AUTO,
    head_dim: int = 64,
) -> str:
    """The backend that runs the call: ``backend`` itself if it can, ``"auto"``'s choice, or ValueError
    naming why it cannot and which backends can."""
    if backend == AUTO_BACKEND:
        if device.type != "cuda" or mode == RECURRENT:
            return "torch"
        if torch.compiler.is_compiling():  # fla is not traceable (torch.compiler.disable); the Triton kernel is
            candidates = ("triton",)
        elif dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
            candidates = ("triton",)  # fla would take TF32 products where the user asked for fp32
        else:
            candidates = ("fla", "triton")
        for candidate in candidates:
            if unsupported(candidate, device, dtype, one_d, step, head_dim) is None:
                return candidate
        return "torch"
    reason = unsupported(backend, device, dtype, one_d, step, head_dim)
    if reason is None:
        return backend
    usable = [b for b in BACKENDS[1:] if unsupported(b, device, dtype, one_d, step, head_dim) is None]
    raise ValueError(
        f"backend={backend!r} cannot run this call: {reason}. Backends that can: {', '.join(map(repr, usable))}"
        " (or 'auto', which picks one)"
    )
