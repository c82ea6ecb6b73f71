"""Benchmarks: ``make bench`` runs them at full size, ``make test`` once at a tiny size."""
