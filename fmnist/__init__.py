"""Shared core of the three implementations: data, canonical weights, metrics, progress, CLI."""
