"""Building blocks shared by the transformer models."""

from seqrec.models.layers.attention import (
    ATTN_IMPLS,
    CausalSelfAttention,
    TimeIntervalSelfAttention,
    causal_padding_mask,
)
from seqrec.models.layers.feedforward import PointWiseFeedForward
from seqrec.models.layers.residual import Residual, TransformerBlock, apply_mask

__all__ = [
    "ATTN_IMPLS",
    "CausalSelfAttention",
    "PointWiseFeedForward",
    "Residual",
    "TimeIntervalSelfAttention",
    "TransformerBlock",
    "apply_mask",
    "causal_padding_mask",
]
