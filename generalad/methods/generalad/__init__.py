"""GeneralAD (Sträter et al., ECCV 2024): frozen patch features, feature distortions, a cross-patch
attention discriminator.

Method doc: docs/methods/generalad.md. Pure modules: ``distortions`` (the registry table), ``discriminator``,
``losses``; training step and presets: ``core``; the attention memory planner: ``memory``; the estimator:
``estimator``.
"""

from generalad.methods.generalad.estimator import GeneralAD, GeneralADConfig

__all__ = ["GeneralAD", "GeneralADConfig"]
