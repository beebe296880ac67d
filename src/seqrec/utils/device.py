"""Device and mixed-precision choices, shared by training, the pre-flight check and loading."""

from __future__ import annotations

import torch


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when available), ``cuda`` (fails clearly without it) or ``cpu``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but CUDA is not available: use --device cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def resolve_amp(amp: str, device: torch.device) -> str:
    """The precision ``--amp`` gives on ``device``: ``off`` on CPU, ``auto`` -> bf16 or fp16."""
    if device.type != "cuda" or amp == "off":
        return "off"
    if amp == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return amp


def autocast_for(device: torch.device, amp: str):
    """A zero-argument context factory for mixed precision (None on CPU / when off) and
    whether fp16 loss scaling is needed."""
    amp = resolve_amp(amp, device)
    if amp == "off":
        return None, False
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype == torch.float16
