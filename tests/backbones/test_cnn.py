"""CNN backbones: efficientnet_lite0 key conversion on the real ImageNet file, hooks that stop early, local
torchvision weights."""

from __future__ import annotations

import pytest
import torch
import torchvision

from generalad.backbones import CNNBackbone, create_backbone, preprocess
from generalad.errors import ConfigError

BOTTLE_CLASSES = {440, 737, 898, 907}  # beer bottle, pop bottle, water bottle, wine bottle


def test_efficientnet_lite0_real_weights_classify_a_bottle(bottle_dir, data_api):
    read_image, _ = data_api
    bb = create_backbone("efficientnet_lite0")  # strict load of the renamed efficientnet_pytorch keys
    assert bb.weights_sha256.startswith("579344248a93")
    assert bb.layers == ["blocks.2", "blocks.4"] and bb.strides == [8, 16] and bb.channels == [40, 112]
    x = preprocess([read_image(bottle_dir / "train" / "good" / "000.png")], 224, bb.mean, bb.std)
    with torch.inference_mode():
        logits = bb.model(x)  # hooks are idle outside bb.forward: the whole classifier runs
        feats = bb(x)
    top5 = set(logits[0].topk(5).indices.tolist())
    assert top5 & BOTTLE_CLASSES, top5
    assert [tuple(m.shape) for m in feats.maps] == [(1, 40, 28, 28), (1, 112, 14, 14)]


def test_forward_stops_after_last_needed_layer():
    bb = create_backbone("resnet18", weights="random", layers=["layer1.0", "layer2.1", "layer3.1"])
    ran = []
    bb.model.layer4.register_forward_hook(lambda *a: ran.append("layer4"))
    bb.model.fc.register_forward_hook(lambda *a: ran.append("fc"))
    with torch.inference_mode():
        maps = bb(torch.randn(2, 3, 64, 96)).maps
    assert ran == []
    assert [tuple(m.shape) for m in maps] == [(2, 64, 16, 24), (2, 128, 8, 12), (2, 256, 4, 6)]
    assert bb.strides == [4, 8, 16]


def test_layers_keep_the_requested_order():
    bb = create_backbone("resnet18", weights="random", layers=["layer3", "layer2"])
    with torch.inference_mode():
        maps = bb(torch.randn(1, 3, 64, 64)).maps
    assert [m.shape[1] for m in maps] == [256, 128]


def test_bad_layer_and_attention_requests_are_config_errors():
    with pytest.raises(ConfigError, match=r"unknown layer 'layer9' for resnet18 \(--layers\); choose from: conv1"):
        create_backbone("resnet18", weights="random", layers=["layer9"])
    bb = create_backbone("resnet18", weights="random")
    with pytest.raises(ConfigError, match="needs a ViT"):
        bb(torch.zeros(1, 3, 32, 32), with_attention=True)


def test_torchvision_weights_from_local_file(tmp_path):
    torch.manual_seed(0)
    src = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    bb = create_backbone("resnet18", weights=str(path))
    assert isinstance(bb, CNNBackbone) and bb.weights_path == str(path)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        maps = bb(x).maps
        h = src.maxpool(src.relu(src.bn1(src.conv1(x))))
        l2 = src.layer2(src.layer1(h))
        l3 = src.layer3(l2)
    torch.testing.assert_close(maps[0], l2)
    torch.testing.assert_close(maps[1], l3)
    assert not any(p.requires_grad for p in bb.parameters()) and not bb.training


def test_unknown_backbone_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown backbone 'foo' \(--backbone\); choose one of: .*resnet18"):
        create_backbone("foo")


def test_download_urls_are_torchvision_imagenet1k_v1_and_describe_is_json():
    import json

    from generalad.backbones.cnn import CNN_MODELS

    tv = torchvision.models
    assert CNN_MODELS["resnet18"].url == tv.ResNet18_Weights.IMAGENET1K_V1.url
    assert CNN_MODELS["resnet34"].url == tv.ResNet34_Weights.IMAGENET1K_V1.url
    assert CNN_MODELS["wide_resnet50_2"].url == tv.Wide_ResNet50_2_Weights.IMAGENET1K_V1.url
    desc = json.loads(json.dumps(create_backbone("resnet18", weights="random").describe()))
    assert desc["kind"] == "cnn" and desc["weights_sha256"] == "random-init" and desc["strides"] == [8, 16]
