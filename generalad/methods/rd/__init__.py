"""Reverse distillation: RD4AD (``rd``) and ARD, RD4AD with attention in its one-class embedding (``ard``).

docs/methods/ard.md. Modules: ``attention`` (CBAM / SE / ECA), ``modules`` (OCBE, decoder, student),
``core`` (loss, maps, training step), ``config`` (configs, teachers, presets), ``estimator``.
"""

from generalad.methods.rd.config import ARDConfig, RDConfig
from generalad.methods.rd.estimator import ARD, ReverseDistillation

__all__ = ["ARD", "ARDConfig", "RDConfig", "ReverseDistillation"]
