"""Name -> model class registry; :func:`build_model` builds a registered model."""

from __future__ import annotations

from typing import Any

from seqrec.models.base import SequentialRecommender

_REGISTRY: dict[str, type[SequentialRecommender]] = {}


def register_model(name: str):
    """Class decorator: ``@register_model("sasrec")``. Names are case-insensitive."""
    key = name.lower()

    def deco(cls: type[SequentialRecommender]) -> type[SequentialRecommender]:
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"model name {name!r} is already registered to {_REGISTRY[key]}")
        if getattr(cls, "config_class", None) is None:
            raise TypeError(f"{cls.__name__} must define config_class to be registered")
        _REGISTRY[key] = cls
        cls.registry_name = key
        return cls

    return deco


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[SequentialRecommender]:
    """The class registered as ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return _REGISTRY[str(name).lower()]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; available models: {', '.join(available_models())}"
        ) from None


def build_model(name: str, n_items: int, maxlen: int = 200, config: Any = None, **options: Any) -> SequentialRecommender:
    """Build model ``name`` for ``n_items`` items and windows up to ``maxlen``.

    Either ``config`` (the model's config dataclass) or ``options`` spelled as the command-line
    flags (``hidden_units=64``, ``mhc=True``, ``mhc_expansion_rate=2``); unknown names and
    invalid values raise ``ValueError`` saying what to change.
    """
    cls = get_model_class(name)
    if config is None:
        config = cls.config_from_options(**options)
    elif options:
        raise ValueError("pass either config= or options, not both")
    return cls(n_items, config, maxlen)
