"""Point-wise (per position) feed-forward sub-layer."""

from __future__ import annotations

from torch import Tensor, nn

from seqrec.models.layers.dropout import Dropout

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class PointWiseFeedForward(nn.Module):
    """``Linear(D, D_ff) -> act -> dropout -> Linear(D_ff, D) -> dropout``.

    SASRec uses ``D_ff = D`` and ReLU (its "two Conv1d with kernel 1" are exactly two
    per-position Linear layers). ``forward(x [..., D]) -> [..., D]``.
    """

    def __init__(self, dim: int, hidden: int | None, dropout: float, activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        hidden = hidden or dim
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout2(self.fc2(self.dropout1(self.act(self.fc1(x)))))
