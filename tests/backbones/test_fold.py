"""BatchNorm folding and CPU micro-batches of the frozen CNN backbones (backbones/fold.py, cnn.py)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from generalad.backbones import create_backbone
from generalad.backbones.fold import fold_batchnorm


def _resnet_with_statistics() -> nn.Module:
    """A random resnet18 whose BatchNorms carry non-trivial statistics and affine terms (random init has
    mean 0 / var 1 / γ 1 / β 0, which folding would reproduce even if it were wrong)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model


def test_folded_resnet_matches_the_original():
    model = _resnet_with_statistics()
    probe = torch.randn(2, 3, 64, 64)
    folded, n = fold_batchnorm(model, probe)
    assert n == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(3, 3, 96, 80)
    with torch.inference_mode():
        ref, out = model(x), folded(x)
    assert float((ref - out).abs().max() / ref.abs().max()) < 1e-5
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is left as it was


def test_a_kept_convolution_is_not_folded():
    model = _resnet_with_statistics()
    folded, n = fold_batchnorm(model, torch.randn(1, 3, 64, 64), keep=["conv1"])
    assert n == 19 and isinstance(folded.bn1, nn.BatchNorm2d) and folded.conv1.bias is None


class _SharedOutput(nn.Module):
    """conv → bn, but the raw conv output is also added back: folding would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_mean.fill_(0.7)
            self.bn.running_var.fill_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_a_fold_that_changes_the_output_is_refused():
    model = _SharedOutput().eval()
    folded, n = fold_batchnorm(model, torch.randn(1, 3, 16, 16))
    assert folded is model and n == 0


def test_lite0_is_folded_and_bundles_its_loaded_weights():
    bb = create_backbone("efficientnet_lite0", layers=["blocks.2", "blocks.4"])
    assert bb.folded_batchnorms == 49
    state = bb.source_state_dict()
    assert "bn1.running_var" in state and "blocks.0.0.conv_dw.bias" not in state


def test_bundled_weights_are_read_again_from_their_file(tmp_path):
    """The unfolded weights are not kept in memory beside the folded ones: bundling re-reads the file, and a
    file that changed since the backbone was loaded is a one-line WeightsError, never other weights."""
    import pytest
    from safetensors.torch import save_file

    from generalad.backbones.weights import load_state_dict_file
    from generalad.errors import WeightsError

    bundled = create_backbone("efficientnet_lite0")
    state = bundled.source_state_dict()  # the bundled file (the package's .pth), in timm's keys
    assert "bn1.running_var" in state and "blocks.0.0.conv_dw.bias" not in state
    copy = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(copy))
    bb = create_backbone("efficientnet_lite0", weights=str(copy), layers=["blocks.2"])
    again = bb.source_state_dict()
    assert set(again) == set(state) and all(torch.equal(again[k], state[k]) for k in state)
    on_disk = load_state_dict_file(copy)
    on_disk["bn1.running_var"] = on_disk["bn1.running_var"] + 1
    save_file(on_disk, str(copy))
    with pytest.raises(WeightsError, match="changed after efficientnet_lite0 was loaded") as err:
        bb.source_state_dict()
    assert "\n" not in str(err.value)


def test_micro_batches_give_the_whole_batch_features(monkeypatch):
    bb = create_backbone("resnet18", weights="random", layers=["layer1", "layer2"])
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = bb(x).maps
        monkeypatch.setattr("generalad.backbones.cnn.MICRO_BATCH_BYTES", 1)  # one image per forward
        assert bb.micro_batch(x) == 1
        parts = bb(x).maps
    for a, b in zip(whole, parts, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_micro_batch_size_follows_the_largest_activation():
    bb = create_backbone("efficientnet_lite0", layers=["blocks.2", "blocks.4"])
    # the stride-2 stem's 32 channels grow to 96 in blocks.1's expansion: 24 elements per input pixel
    assert bb._activation_per_pixel == 24.0
    assert bb.micro_batch(torch.zeros(16, 3, 224, 224)) == 3  # 4.8 MB per image under the 16 MiB budget
    assert bb.micro_batch(torch.zeros(16, 3, 518, 518)) == 1
