"""PatchCore (Roth et al., CVPR 2022): a coreset memory bank of locally aware patch features.

Method doc: docs/methods/patchcore.md. ``estimator.py`` is the estimator; the shared tensor code it uses
(locally aware patches, coreset, nearest neighbours, leave-one-out) lives in ``generalad.nn``.
"""

from generalad.methods.patchcore.estimator import PatchCore, PatchCoreConfig

__all__ = ["PatchCore", "PatchCoreConfig"]
