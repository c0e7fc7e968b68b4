"""Make mmengine's own checkpoints load under torch's ``weights_only=True`` — without trusting pickles.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``, and mmengine 0.10.7 calls it without
arguments when it resumes a run (``--resume``), loads ``load_from`` or runs ``mim test``. Its
checkpoints hold more than tensors: the message hub's ``HistoryBuffer`` objects (numpy arrays, and a
dict of *bound statistics methods* that pickle writes as ``getattr(HistoryBuffer, "mean")``), plus numpy
scalars in the metadata. Loading them fails with "Unsupported global".

The fix here keeps the safe unpickler and extends its allowlist; it never turns weights-only
loading off:

* numpy's array/scalar reconstruction and dtype classes (data, not code);
* ``mmengine.logging.HistoryBuffer`` (a plain container; no custom ``__setstate__``);
* ``getattr`` *mapped to* :func:`history_buffer_statistic`, which returns only the statistics
  methods HistoryBuffer registers itself (``min``, ``max``, ``current``, ``mean``) and refuses
  anything else. A general ``getattr`` would let a crafted file reach arbitrary code.

Importing :mod:`downstream.hvir_backbone` (every shipped config does, through ``custom_imports``)
installs this before mmengine loads anything.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

#: The statistics HistoryBuffer registers on itself; nothing else may be fetched by ``getattr``.
HISTORY_BUFFER_STATISTICS = ("min", "max", "current", "mean")


def history_buffer_statistic(owner, name: str):
    """The only ``getattr`` a checkpoint may perform: a HistoryBuffer statistics method."""
    if owner is HistoryBuffer and name in HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise ValueError(
        f"checkpoint asks for getattr({owner!r}, {name!r}); only HistoryBuffer statistics"
        f" {HISTORY_BUFFER_STATISTICS} are allowed when loading tensors-only"
    )


def _numpy_globals() -> list:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed core → _core
    dtype_classes = [cls for _, cls in inspect.getmembers(np.dtypes, inspect.isclass)]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


def allow_mmengine_checkpoints() -> None:
    """Extend torch's weights-only allowlist with what mmengine checkpoints contain (idempotent)."""
    torch.serialization.add_safe_globals(
        [*_numpy_globals(), HistoryBuffer, (history_buffer_statistic, "builtins.getattr")]
    )


allow_mmengine_checkpoints()
