"""Shared core of the implementations: data, canonical weights, metrics, progress, CLI."""
