"""Sequential recommendation models and their registry.

>>> from seqrec.models import build_model
>>> model = build_model("sasrec", n_items=100, maxlen=50, hidden_units=32, num_heads=2)
"""

from seqrec.models.base import TIME_UNITS, SequentialRecommender
from seqrec.models.layers.mhc import MHCConfig
from seqrec.models.registry import available_models, build_model, get_model_class, register_model
from seqrec.models.sasrec import SASRec, SASRecConfig
from seqrec.models.ss4rec import SS4Rec, SS4RecConfig
from seqrec.models.tisasrec import TiSASRec, TiSASRecConfig, time_interval_matrix

__all__ = [
    "MHCConfig",
    "SASRec",
    "SASRecConfig",
    "SS4Rec",
    "SS4RecConfig",
    "SequentialRecommender",
    "TIME_UNITS",
    "TiSASRec",
    "TiSASRecConfig",
    "available_models",
    "build_model",
    "get_model_class",
    "register_model",
    "time_interval_matrix",
]
