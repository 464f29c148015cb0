"""Shared fixtures: paths to the real data in ../shared (tests skip cleanly when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from generalad.device import CPU_BF16_ENV

# precision="auto" resolves per CPU: bf16 on AVX512-BF16 / AMX, fp32 elsewhere (generalad.device). The suite's
# parity tolerances (export vs torch, two ranks vs one) are fp32 ones, and CI lands on either kind of CPU, so
# "auto" means fp32 here — in this process and in the CLI / torchrun children it starts — unless the caller
# set GENERALAD_CPU_BF16 already. The bf16 paths are tested by asking for "bf16"; the probe by tests/test_device.py.
os.environ.setdefault(CPU_BF16_ENV, "0")

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT.parent / "shared").resolve()
DATA = SHARED / "data"
VITS14_WEIGHTS = SHARED / "weights" / "vits14_dinov2_imgfocus.safetensors"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available: {path} (expected ../shared beside the project)")
    return path


@pytest.fixture(scope="session")
def bottle_dir() -> Path:
    return _need(DATA / "mvtec_bottle_subset" / "bottle")


@pytest.fixture(scope="session")
def magnetic_tile_dir() -> Path:
    return _need(DATA / "magnetic_tile")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return _need(DATA / "mnist_subset")


@pytest.fixture(scope="session")
def vits14_weights() -> Path:
    return _need(VITS14_WEIGHTS)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: a second intra-op thread only adds barrier waits on a shared, oversubscribed box
    (measured 10x slower there); results are identical either way."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def bottle(bottle_dir):
    """The bottle subset as a Dataset (modules that need their own copy define a module-scoped ``bottle``)."""
    from generalad.data import open_dataset

    return open_dataset(bottle_dir)


@pytest.fixture(scope="session")
def small_run(bottle, tmp_path_factory):
    """(fitted model, its saved directory): PatchCore on Lite0 at 64 px, fitted on 4 bottle training images —
    a real, fast model for the deploy and serve tests."""
    from generalad.methods.patchcore import PatchCore

    model = PatchCore(backbone="efficientnet_lite0", image_size=64, device="cpu", precision="fp32", calibration_min=2)
    model.fit(bottle.train[:4])
    return model, model.save(tmp_path_factory.mktemp("run") / "model")

