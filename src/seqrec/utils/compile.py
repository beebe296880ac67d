"""``torch.compile`` for training and inference (``--compile``), with a fallback to eager.

:func:`compile_model` compiles a model in place (``torch.compile`` of its ``__call__``, as
``nn.Module.compile`` does: parameter names, checkpoints and every caller stay the same).
Compilation is lazy, so a failure (no C++ compiler for Inductor on the CPU, an unsupported
operation, a Triton problem) shows at a call: a call that fails to compile while the eager
model runs says so in one line, un-compiles the model and goes on eagerly;
:func:`call_compiled` does the same for a first training step, whose backward graph compiles
at its first use. Errors of the call itself (bad input) are raised as they are.

:func:`eager_when_compiled` marks the parts Inductor should not trace (the state space
scans: custom autograd functions with chunk loops, complex numbers): under ``torch.compile``
they run eagerly between compiled graphs; exporters (``torch.export``, ``jit.trace``) still
trace them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch


def eager_when_compiled(fn: Callable) -> Callable:
    """``fn`` as it is, except inside ``torch.compile`` (not export), where it runs eagerly
    (a graph break)."""
    eager = torch.compiler.disable(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
            return eager(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


def compile_model(model: torch.nn.Module, log: Callable[[str], None] | None = print,
                  backend: str = "inductor") -> torch.nn.Module:
    """Compile ``model`` in place (``torch.compile`` of its ``__call__``: dynamic shapes once a
    second window length is seen); returns it. A call that fails to compile while the eager
    model runs logs one line, un-compiles the model and returns the eager result; an error
    of the eager model itself (bad input) is raised as it is. ``backend``: torch.compile's."""
    compiled = torch.compile(model._call_impl, backend=backend)

    def guarded(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except Exception as exc:  # compile errors come wrapped in many types
            out = model._call_impl(*args, **kwargs)  # raises the call's own error, if it is one
            uncompile(model)
            _say_fallback(model, exc, log)
            return out

    model._compiled_call_impl = guarded
    return model


def is_compiled(model: torch.nn.Module) -> bool:
    return getattr(model, "_compiled_call_impl", None) is not None


def uncompile(model: torch.nn.Module) -> None:
    model._compiled_call_impl = None


def _say_fallback(model, exc: Exception, log) -> None:
    if log:
        text = str(exc).strip()
        first = text.splitlines()[0][:200] if text else ""
        log(f"--compile: torch.compile could not compile {type(model).__name__} ({type(exc).__name__}: {first}); "
            f"running eagerly from here (the same model, without the speed-up)")


def call_compiled(model: torch.nn.Module, fn: Callable[[], Any], log: Callable[[str], None] | None = print) -> Any:
    """``fn()``, a call that runs ``model`` forward *and backward* (one training step), with the
    fallback of :func:`compile_model` for the backward graph too (compiled at its first use)."""
    if not is_compiled(model):
        return fn()
    try:
        return fn()
    except Exception as exc:
        compiled, model._compiled_call_impl = model._compiled_call_impl, None
        try:
            out = fn()  # eagerly: raises the step's own error, if it is one
        except Exception:
            model._compiled_call_impl = compiled
            raise
        _say_fallback(model, exc, log)
        return out
