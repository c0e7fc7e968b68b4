"""The retention forms: one vocabulary, its named subsets, and the one check used at the public edges.

A form is how a retention network computes the same function: ``"parallel"`` (the whole N×N
decay matrix), ``"recurrent"`` (token by token from a carried state), ``"chunkwise"`` (blocks of
tokens or tiles of grid rows, linear cost), ``"auto"`` (parallel up to a measured crossover,
chunkwise beyond) and, for a whole model, ``"streaming"`` (bands of image rows through every
layer in turn; inference only).

The vocabulary is a :data:`typing.Literal` of plain strings rather than an ``Enum``: the forms
travel as strings through YAML configs, the command line (jsonargparse), checkpoints' saved
hyper-parameters, ``config.json`` of pretrained folders and OpenMMLab configs, and every one of
those would need an Enum converted back and forth (and would save ``!!python/object`` tags); a
``Literal`` is what they already carry, and type checkers still see the allowed values. The
names below are the only place the strings are spelled; everything else imports them.
(``ImageClassifier``'s ``train_mode``/``eval_mode`` are annotated ``str`` on purpose: jsonargparse
would refuse a bad value of a ``Literal`` with a generic "Problem with given class_path" that
names neither the option nor, for ``train_mode: streaming``, why; :func:`check_form` says both.)

Which forms each edge accepts:

- :data:`ExactForm` / :data:`EXACT_FORMS`: what the op computes (``"auto"`` resolves to one).
- :data:`OpForm` / :data:`OP_FORMS`: what ``retention(mode=...)`` accepts — the exact forms and ``"auto"``.
- :data:`RetentionForm` / :data:`MODEL_FORMS`: what a model's ``set_retention_mode`` (and
  ``eval_mode``) accepts — the op's, plus ``"streaming"``.
- :data:`TrainForm` / :data:`TRAIN_FORMS`: what training accepts (``train_mode``): the op's.

(Each tuple is ``typing.get_args`` of its ``Literal``, so the two cannot disagree.)

:func:`check_form` checks a form and its ``chunk_size`` against one of them (its ``scope``), with the name of the
option in the message. Interior layers trust what an edge checked; the op's public ``retention``
still checks its own arguments on every call (it is an edge for direct users).
"""

from __future__ import annotations

import numbers
from typing import Literal, get_args

#: The forms the op computes exactly (``"auto"`` resolves to one of them).
ExactForm = Literal["parallel", "recurrent", "chunkwise"]
#: What ``retention(mode=...)`` and a retention layer accept: the exact forms and ``"auto"``.
OpForm = Literal[ExactForm, Literal["auto"]]
#: Every form a retention network knows: what a model (``set_retention_mode``, ``retention_mode=``)
#: and evaluation (``eval_mode``) accept — the op's, plus ``"streaming"``.
RetentionForm = Literal[OpForm, Literal["streaming"]]
#: What training (``train_mode``) accepts: the op's forms; streaming has no gradients between bands.
TrainForm = OpForm

PARALLEL, RECURRENT, CHUNKWISE, AUTO, STREAMING = get_args(RetentionForm)

EXACT_FORMS: tuple[str, ...] = get_args(ExactForm)
OP_FORMS: tuple[str, ...] = get_args(OpForm)
MODEL_FORMS: tuple[str, ...] = get_args(RetentionForm)
TRAIN_FORMS: tuple[str, ...] = get_args(TrainForm)


def check_positive_int(name: str, value) -> int:
    """``value`` as an int, or ValueError naming ``name`` unless it is a positive integer."""
    # numbers.Integral admits NumPy integers (e.g. a shape read from an array), which are exact.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid; expected a positive integer")
    return int(value)


#: The forms each edge accepts, by the ``scope`` of :func:`check_form`.
FORMS_OF: dict[str, tuple[str, ...]] = {"op": OP_FORMS, "model": MODEL_FORMS, "train": TRAIN_FORMS}


def check_form(
    mode: str,
    chunk_size: int | None = None,
    scope: Literal["op", "model", "train"] = "model",
    option: str | None = None,
) -> None:
    """ValueError unless ``mode`` is a form of ``scope`` and ``chunk_size`` is None or a positive integer.

    The one check of a form, used at the public edges (the op's ``retention``, a model's
    constructor and ``set_retention_mode``, the classifier's and the detection backbone's
    ``train_mode``/``eval_mode``); what they pass on is trusted further down.

    Args:
        mode: the form.
        chunk_size: chunkwise chunk size (tokens in 1D, grid rows in 2D), or with ``"streaming"``
            the band height in patch rows.
        scope: ``"op"`` (:data:`OP_FORMS`), ``"model"`` (:data:`MODEL_FORMS`) or ``"train"``
            (:data:`TRAIN_FORMS`).
        option: the option that carried ``mode`` (e.g. ``"train_mode"``), named first in the message.
    """
    allowed = FORMS_OF[scope]
    prefix = f"{option}: " if option else ""
    if mode not in allowed:
        if mode == STREAMING and scope == "train":
            raise ValueError(
                f"{option or 'mode'}='streaming' is inference-only (no gradients flow between"
                " bands); train with 'chunkwise' (linear memory) or 'auto', and use streaming"
                " for eval_mode"
            )
        hint = (
            " ('streaming' is a form of a whole model: model.set_retention_mode('streaming'))"
            if mode == STREAMING
            else ""
        )
        raise ValueError(f"{prefix}mode={mode!r} is unknown; expected one of {allowed}{hint}")
    if chunk_size is not None:
        try:
            check_positive_int("chunk_size", chunk_size)
        except ValueError as error:
            raise ValueError(f"{prefix}{error}") from None


def whole_image_form(mode: str, chunk_size: int | None) -> tuple[str, int | None]:
    """The form (and chunk size) a model's layers take over a whole image when it is set to ``mode``.

    Every form is its own, except ``"streaming"``: the model streams bands, but its layers (and
    anything that needs the whole image at once: training, ``forward_intermediates``) run
    ``"auto"`` with the default chunk, since streaming's ``chunk_size`` is a band height in patch
    rows, not a chunk.
    """
    return (AUTO, None) if mode == STREAMING else (mode, chunk_size)
