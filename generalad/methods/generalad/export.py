"""GeneralAD's inference as a traceable module (docs/DEPLOY.md): tokens → discriminator → top-k mean.

The same functions as ``GeneralAD._infer_features`` (``patch_tokens``, the discriminator in eval mode, the
mean of the ``top_k`` largest logits); the discriminator is a deep copy so exporting never touches the model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from generalad.methods.generalad.discriminator import Discriminator


class GeneralADHead(nn.Module):
    """(maps, attention) → (top-k mean logit (B,), logit grid (B, h, w))."""

    def __init__(self, disc: Discriminator, top_k: int, *, vit: bool, cnn_token_norm: bool) -> None:
        super().__init__()
        self.disc = copy.deepcopy(disc).float().eval()
        self.top_k, self.vit, self.cnn_token_norm = int(top_k), vit, cnn_token_norm

    def forward(self, maps: list[torch.Tensor], attention: torch.Tensor | None = None):
        from generalad.methods.generalad.estimator import patch_tokens

        h, w = maps[0].shape[-2:]
        tokens, _ = patch_tokens(maps, attention, vit=self.vit, cnn_token_norm=self.cnn_token_norm)
        logits = self.disc(tokens).float()
        if self.top_k >= logits.shape[1]:
            scores = logits.mean(dim=1)
        else:
            scores = torch.topk(logits, self.top_k, dim=1).values.mean(dim=1)
        return scores, logits.reshape(logits.shape[0], h, w)
