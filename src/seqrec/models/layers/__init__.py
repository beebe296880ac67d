"""Building blocks shared by the transformer models."""

from seqrec.models.layers.attention import (
    ATTN_IMPLS,
    CausalSelfAttention,
    TimeIntervalSelfAttention,
    causal_padding_mask,
)
from seqrec.models.layers.feedforward import PointWiseFeedForward
from seqrec.models.layers.mhc import (
    HyperConnection,
    HyperConnectionFactory,
    expand_streams,
    reduce_streams,
    sinkhorn,
)
from seqrec.models.layers.residual import (
    Residual,
    ResidualFactory,
    TransformerBlock,
    apply_mask,
)

__all__ = [
    "ATTN_IMPLS",
    "CausalSelfAttention",
    "HyperConnection",
    "HyperConnectionFactory",
    "PointWiseFeedForward",
    "Residual",
    "ResidualFactory",
    "TimeIntervalSelfAttention",
    "TransformerBlock",
    "apply_mask",
    "causal_padding_mask",
    "expand_streams",
    "reduce_streams",
    "sinkhorn",
]
