"""What an exported graph cannot do is refused in one line, before anything is written."""

from __future__ import annotations

import pytest
import torch

from generalad.errors import ConfigError
from generalad.methods.anomalyhybrid import AnomalyHybrid
from generalad.methods.anomalyhybrid.detector import DiscriminativeUNet
from generalad.methods.inreach import InReaCh


def test_aligned_inreach_is_refused(bottle_dir):
    from generalad.data import open_dataset

    model = InReaCh(backbone="efficientnet_lite0", image_size=64, feature_dim=32, align=False, device="cpu",
                    calibration_min=2).fit(open_dataset(bottle_dir).train[:8])
    model.export_module()  # unaligned: fine
    model.reference_ = torch.zeros(64, 64, 3, dtype=torch.uint8)  # as a model fitted with rotational alignment
    with pytest.raises(ConfigError, match="rotational alignment.*align=false"):
        model.export_module()


def test_depth_detectors_are_refused():
    model = AnomalyHybrid(backbone="pixels", preset="smoke", device="cpu")
    model.detectors_ = {"rgb": DiscriminativeUNet(4), "depth": DiscriminativeUNet(4)}
    with pytest.raises(ConfigError, match="only RGB AnomalyHybrid detectors export"):
        model.export_module()
