"""State space layers for SS4Rec.

* :mod:`seqrec.models.ssm.s5` -- time-aware S5 (diagonal complex SSM, zero-order hold with
  real time gaps), chunked parallel :func:`linear_scan` and its sequential reference;
* :mod:`seqrec.models.ssm.selective_scan` -- Mamba's selective scan (pure chunked path with
  a memory-light custom backward, optional fused mamba_ssm kernel, sequential reference)
  and the :class:`Mamba` block.
"""

from seqrec.models.ssm.s5 import S5, hippo_legs_diagonal, linear_scan, linear_scan_ref, zoh_coefficients
from seqrec.models.ssm.selective_scan import (
    Mamba,
    fused_selective_scan_available,
    selective_scan,
    selective_scan_ref,
)

__all__ = [
    "Mamba",
    "S5",
    "fused_selective_scan_available",
    "hippo_legs_diagonal",
    "linear_scan",
    "linear_scan_ref",
    "selective_scan",
    "selective_scan_ref",
    "zoh_coefficients",
]
