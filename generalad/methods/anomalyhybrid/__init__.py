"""AnomalyHybrid: a structure-conditioned generator of realistic anomalies and a UNet detector trained on them.

docs/methods/anomalyhybrid.md. Modules: ``structure`` (edge / depth maps), ``augment`` (self-supervised
pairs, local TPS), ``generator`` (encoder, AHD / AHE decoders, PatchGAN), ``train_gen`` (GAN training),
``manipulate`` (regions and structure edits), ``generate`` (anomaly sets, contact sheets), ``detector``
(DRAEM-style UNet, focal loss), ``config``, ``estimator``.
"""

from generalad.methods.anomalyhybrid.config import AnomalyHybridConfig
from generalad.methods.anomalyhybrid.estimator import AnomalyHybrid, load_generator

__all__ = ["AnomalyHybrid", "AnomalyHybridConfig", "load_generator"]
