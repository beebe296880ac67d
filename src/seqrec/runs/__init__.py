"""Run folders: their layout (:mod:`.folder`) and loading a trained run back (:mod:`.load`)."""

from .folder import RunClaim, RunFolder

__all__ = ["RunClaim", "RunFolder"]
