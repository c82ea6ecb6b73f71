"""Mutirão: distributed, collaborative task processing."""

from mutirao.client.canvas import chain, chord, group, result_of, sig
from mutirao.registry import Retry, task

__all__ = ["Retry", "chain", "chord", "group", "result_of", "sig", "task"]
__version__ = "0.1.0"
