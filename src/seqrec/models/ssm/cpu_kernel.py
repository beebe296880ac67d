"""The optional fused CPU selective-scan kernel (``cpu_scan.cpp``), built on first use.

:func:`cpu_scan_kernel` compiles ``cpu_scan.cpp`` with ``torch.utils.cpp_extension.load``
(ninja and a C++ compiler; about a minute, once per machine: the build is cached under
``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``) and returns the loaded
module, or ``None`` where it cannot be built, after one line saying why; the pure-PyTorch scan
is then used. ``SEQREC_CPU_KERNEL=0`` switches the kernel off (no build is attempted).

The build is tuned to the CPU it runs on (``-march=native``); the extension's name carries a
digest of the source, the flags and the CPU's feature list, so machines of different CPUs that
share a home directory each build their own.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
from pathlib import Path
from types import ModuleType

__all__ = ["cpu_kernel_describe", "cpu_kernel_status", "cpu_scan_kernel"]

SOURCE = Path(__file__).with_name("cpu_scan.cpp")
CFLAGS = ["-O3", "-ffast-math", "-fopenmp-simd", "-march=native"]
ENV = "SEQREC_CPU_KERNEL"

_lock = threading.Lock()
_state: dict[str, object] = {}  # "module" (ModuleType | None), "reason" (str)


def _cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build_name() -> str:
    digest = hashlib.sha1()
    for part in (SOURCE.read_bytes(), " ".join(CFLAGS).encode(), _cpu_features().encode()):
        digest.update(part)
    return f"seqrec_cpu_scan_{digest.hexdigest()[:12]}"


def _is_built(name: str) -> bool:
    try:  # torch's cache folder for the extension (a private helper: if it moves, say "building")
        from torch.utils.cpp_extension import _get_build_directory

        return (Path(_get_build_directory(name, verbose=False)) / f"{name}.so").exists()
    except Exception:
        return False


def _switched_off() -> bool:
    return os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off")


def _load() -> tuple[ModuleType | None, str]:
    if _switched_off():
        return None, f"{ENV}=0"
    if platform.system() == "Windows":
        return None, "not built on Windows"
    try:
        from torch.utils import cpp_extension

        name = _build_name()
        if not _is_built(name):
            print("seqrec: building the CPU selective-scan kernel (once per machine, about a minute; "
                  f"{ENV}=0 skips it)", file=sys.stderr, flush=True)
        module = cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=CFLAGS, verbose=False)
        return module, "built"
    except Exception as exc:  # no compiler, no ninja, a failed build
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"seqrec: CPU selective-scan kernel unavailable ({reason[:200]}); using the pure PyTorch scan",
              file=sys.stderr, flush=True)
        return None, reason


def cpu_scan_kernel() -> ModuleType | None:
    """The compiled kernel module (``forward``, ``backward``), or ``None`` where it cannot be
    built or is switched off. Built at the first call of the process, then remembered."""
    if "module" not in _state:
        with _lock:
            if "module" not in _state:
                _state["module"], _state["reason"] = _load()
    return _state["module"]  # type: ignore[return-value]


def cpu_kernel_status() -> str:
    """Why the kernel is or is not in use (after :func:`cpu_scan_kernel` has run)."""
    return str(_state.get("reason", "not loaded yet"))


def cpu_kernel_describe() -> str:
    """One line on the kernel for ``seqrec verify``, without building it."""
    if _switched_off():
        return f"fused CPU selective scan switched off ({ENV}=0): state-space models use the pure PyTorch scan"
    if "module" in _state:
        return ("fused CPU selective scan loaded" if _state["module"] is not None
                else f"fused CPU selective scan unavailable ({cpu_kernel_status()}): the pure PyTorch scan is used")
    try:
        built = _is_built(_build_name())
    except OSError:
        built = False
    return ("fused CPU selective scan built (cached)" if built else
            "fused CPU selective scan not built yet: built at its first use (about a minute, once per machine)")
