"""InReaCh (McIntosh & Branzan Albu, ICCV 2023): nominal patch channels from training data that may
contain anomalies.

Method doc: docs/methods/inreach.md. Pure tensor code: ``channels`` (association, channels, filters),
``layout`` (transpose test, rotational alignment), ``search`` (1-NN to the bank); the estimator: ``estimator``.
"""

from generalad.methods.inreach.estimator import InReaChModelConfig, InReaCh

__all__ = ["InReaCh", "InReaChModelConfig"]
