"""Weights resolution: local file + sha256, download cache, offline mode, one-line errors. No network."""

from __future__ import annotations

import hashlib
import os
import urllib.error

import pytest
import torch

from generalad.backbones import create_backbone
from generalad.backbones import weights as W
from generalad.errors import WeightsError


@pytest.fixture
def no_download(monkeypatch):
    """Any download attempt fails like an unreachable host, and is recorded."""
    calls = []

    def fail(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    monkeypatch.delenv(W.OFFLINE_ENV, raising=False)
    return calls


def test_sha256_file_streams_and_is_cached_per_mtime_and_size(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc" * 1000)
    assert W.sha256_file(path) == hashlib.sha256(b"abc" * 1000).hexdigest()
    st = path.stat()
    assert W._SHA_CACHE[(str(path.resolve()), st.st_mtime_ns, st.st_size)] == W.sha256_file(path)
    path.write_bytes(b"other")
    assert W.sha256_file(path) == hashlib.sha256(b"other").hexdigest()


def test_resolve_weights_local_file_checks(tmp_path):
    assert W.resolve_weights("resnet18") is None
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match=rf"resnet18 not found: {missing} \(--weights\)"):
        W.resolve_weights("resnet18", missing)
    path = tmp_path / "w.pth"
    path.write_bytes(b"x")
    good = hashlib.sha256(b"x").hexdigest()
    assert W.resolve_weights("resnet18", path, expected_sha256=good) == path
    with pytest.raises(WeightsError, match="was built with 000000000000"):
        W.resolve_weights("resnet18", path, expected_sha256="0" * 64)


def test_offline_skips_download_immediately(tmp_path, no_download, monkeypatch):
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    with pytest.raises(WeightsError) as err:
        create_backbone("dinov2_vits14", cache_dir=str(tmp_path))
    msg = str(err.value)
    assert no_download == [] and "\n" not in msg
    assert msg.startswith("no weights for dinov2_vits14 offline (GENERALAD_OFFLINE=1): pass --weights PATH")
    assert "official DINOv2, timm or Hugging Face layout" in msg


def test_failed_download_is_one_line_error(tmp_path, no_download):
    with pytest.raises(WeightsError) as err:
        create_backbone("resnet18", cache_dir=str(tmp_path))
    msg = str(err.value)
    assert len(no_download) == 1 and "\n" not in msg
    assert "download from https://download.pytorch.org/models/resnet18-f37072fd.pth failed (URLError" in msg
    assert "--weights PATH" in msg and str(tmp_path / "weights" / "resnet18" / "resnet18-f37072fd.pth") in msg
    assert not list((tmp_path / "weights" / "resnet18").glob("*.part"))


def test_cached_download_is_used_without_network(tmp_path, no_download, monkeypatch):
    monkeypatch.setenv(W.OFFLINE_ENV, "1")  # cached files still work offline
    target = tmp_path / "weights" / "resnet18" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), target)
    bb = create_backbone("resnet18", cache_dir=str(tmp_path))
    assert no_download == [] and bb.weights_path == str(target)


def test_download_lands_atomically_in_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(W.OFFLINE_ENV, raising=False)

    def fake(url, dst, hash_prefix=None, progress=True):
        assert os.path.basename(dst).endswith(".part") and hash_prefix == "f37072fd"
        with open(dst, "wb") as handle:
            handle.write(b"payload")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake)
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path))
    path = W.download_weights("resnet18", "https://x/resnet18-f37072fd.pth", hash_prefix="f37072fd")
    assert path == tmp_path / "weights" / "resnet18" / "resnet18-f37072fd.pth" and path.read_bytes() == b"payload"


def test_state_dict_files_nested_prefixed_and_bad(tmp_path):
    sd = {"a.weight": torch.ones(2)}
    nested = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in sd.items()}}, nested)
    assert W.load_state_dict_file(nested).keys() == {"a.weight"}
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match=rf"cannot read weights file {corrupt}: "):
        W.load_state_dict_file(corrupt)
    pickled = tmp_path / "obj.pth"
    torch.save({"cfg": HoldsCode()}, pickled)  # weights_only=True refuses arbitrary objects
    with pytest.raises(WeightsError, match=rf"cannot read weights file {pickled}: "):
        W.load_state_dict_file(pickled)


class HoldsCode:
    pass


def test_random_init_and_wrong_file_for_backbone(vits14_weights):
    assert create_backbone("resnet18", weights="random").weights_sha256 == "random-init"
    with pytest.raises(WeightsError, match=r"does not fit resnet18: missing keys: conv1\.weight.*unexpected keys"):
        create_backbone("resnet18", weights=str(vits14_weights))
