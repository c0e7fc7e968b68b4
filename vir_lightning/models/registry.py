"""Model registry: ``create_model(name, **overrides)`` and ``list_models()``."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import typing
from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


class UnknownOptionError(ValueError, TypeError):
    """An override the model does not take: a TypeError as Python's own for an unexpected keyword,
    and a ValueError so that the commands (and the grid's model check) print it as one error line."""


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a model constructor under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(name for name in _MODELS if fnmatch.fnmatch(name, pattern))


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model, with keyword overrides of its defaults.

    Example: ``create_model("vir_small_patch16_224", num_classes=10, decay="2d", img_size=384)``.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: unknown name (the message lists close matches) or an invalid override; an
            option the model does not take raises :class:`UnknownOptionError` (a ValueError and a
            TypeError) listing the options it does take.
    """
    if not isinstance(name, str):
        raise TypeError(
            f"model name {name!r} is not a string; expected a registered name, e.g."
            " 'vir_small_patch16_224' (list_models() shows all)"
        )
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (list_models() shows all {len(_MODELS)})")
    options = _options_of(_MODELS[name])
    unknown = sorted(set(overrides) - options) if options else []
    if unknown:
        raise UnknownOptionError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; its options are"
            f" {', '.join(sorted(options))}"
        )
    model = _MODELS[name](**overrides)
    # What rebuilds it (vir_lightning.save_pretrained records both): plain attributes, not in the state_dict.
    model.model_name, model.model_options = name, dict(overrides)
    return model


def _options_of(fn: Callable[..., nn.Module]) -> set[str]:
    """The keyword options of the class a registered constructor returns (from its return
    annotation), or an empty set when that class is unknown (then nothing is pre-checked)."""
    try:
        cls = typing.get_type_hints(fn).get("return")
    except Exception:  # an annotation that does not resolve: leave the check to the constructor
        return set()
    if not inspect.isclass(cls):
        return set()
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return set()
    return {p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
