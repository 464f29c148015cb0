"""generalad — visual anomaly detection across domains."""

__version__ = "0.1.0"
