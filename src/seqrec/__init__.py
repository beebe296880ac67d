"""seqrec: time-aware sequential recommendation."""

__version__ = "0.1.0"
