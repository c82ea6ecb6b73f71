"""Mutirão: distributed, collaborative task processing."""

from mutirao.registry import task

__all__ = ["task"]
__version__ = "0.1.0"
