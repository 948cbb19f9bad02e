"""Kopf operator for BloomzInference resources (inference.bloomz.dev/v1alpha1)."""

__version__ = "0.1.0"
