"""An export traced while CPU micro-batching would split the batch keeps a whole dynamic batch axis."""

from __future__ import annotations

import numpy as np
import torch

from generalad.deploy import Inferencer
from generalad.export import export_model


def test_export_with_one_image_micro_batches_scores_any_batch(small_run, bottle, monkeypatch, tmp_path):
    model, _ = small_run
    monkeypatch.setattr("generalad.backbones.cnn.MICRO_BATCH_BYTES", 1)  # eager forwards: one image each
    assert model.backbone().micro_batch(torch.zeros(3, 3, 64, 64)) == 1
    directory = export_model(model, tmp_path / "onnx", fmt="onnx")
    samples = bottle.test[:5]
    inferencer = Inferencer(directory, batch_size=3)  # batches of 3 then 2
    d_scores = np.concatenate([s for _, s, _ in inferencer.infer_batches(samples)])
    t_scores = np.concatenate([s for _, s, _ in model.infer_batches(samples, use_cache=False)])
    np.testing.assert_allclose(d_scores, t_scores, rtol=0, atol=1e-4 * np.abs(t_scores).max())
