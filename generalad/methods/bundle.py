"""Self-contained model directories: the frozen backbone's weights saved inside the model folder.

``model.save(directory, bundle_backbone=True)`` (``generalad fit --bundle-backbone``) writes the live backbone
module's state dict as ``backbone.safetensors`` next to ``model.safetensors`` and records in ``config.json``::

    "bundled_backbone": {"file": "backbone.safetensors", "sha256": "<of that file>",
                         "source_weights_sha256": "<the weights file the model was fitted with>"}

``load_model`` checks the file's sha256 and builds the backbone from it, whatever weights path the config
recorded, so a model directory copied to another machine or folder loads as it is. The state dict is in the
layout the live module has (timm / torchvision), which every family's loader passes through unchanged.

Records keep stating the *original* weights hash (``source_weights_sha256``): a bundled file is a re-save of
those weights (keys converted, fp16 files widened to fp32), so it hashes differently while the network is the
same, and results of a moved model must stay comparable with those of the model as fitted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from generalad.errors import WeightsError
from generalad.io import atomic_save_safetensors

BUNDLE_FILE = "backbone.safetensors"
BUNDLE_KEY = "bundled_backbone"  # the config.json entry


@dataclasses.dataclass(frozen=True)
class BundledBackbone:
    """A checked ``backbone.safetensors`` of a loaded model directory."""

    path: Path
    sha256: str
    source_weights_sha256: str

    def create(self, name: str, layers: Sequence[str] | None) -> nn.Module:
        """The backbone built from the bundled file, reporting the original weights hash."""
        from generalad.backbones import create_backbone
        from generalad.backbones.weights import weights_label

        # expected_sha256: the file is hashed again (free: remembered per path and mtime) in case it changed
        # between load_model and this first use.
        bb = create_backbone(name, weights=str(self.path), layers=layers, expected_sha256=self.sha256)
        # The family loader set weights_sha256 to the bundle's own hash; records name the weights the model was
        # fitted with instead (see the module docstring). weights_file still says which file was read.
        bb.weights_sha256 = self.source_weights_sha256
        bb.weights_label = weights_label(self.source_weights_sha256)
        return bb


def write_bundle(backbone: nn.Module, directory: Path) -> dict[str, Any]:
    """Write ``backbone``'s weights into ``directory`` (an ``AtomicDir`` temp folder); returns the config entry.

    A backbone without a weight-carrying ``model`` (AnomalyHybrid's pixels) bundles nothing: the entry says so.
    """
    from generalad.backbones.weights import sha256_file

    source = str(getattr(backbone, "weights_sha256", "unknown"))
    module = getattr(backbone, "model", None)  # what the family loaders load a weights file into
    if not isinstance(module, nn.Module):
        kind = getattr(backbone, "kind", type(backbone).__name__)
        return {"file": None, "sha256": None, "source_weights_sha256": source,
                "note": f"the {kind} backbone has no weights: nothing to bundle"}
    metadata = {"backbone": str(getattr(backbone, "name", "")), "source_weights_sha256": source}
    as_loaded = getattr(backbone, "source_state_dict", None)  # CNNs run BatchNorm-folded weights
    state = as_loaded() if callable(as_loaded) else module.state_dict()
    path = atomic_save_safetensors(directory / BUNDLE_FILE, state, metadata)
    return {"file": BUNDLE_FILE, "sha256": sha256_file(path), "source_weights_sha256": source}


def read_bundle(directory: str | Path, meta: dict[str, Any]) -> BundledBackbone | None:
    """The checked bundled backbone of a model directory, or None when it has none (or bundled nothing).

    A missing file or one whose sha256 differs from the recorded one is a one-line ``WeightsError``.
    """
    from generalad.backbones.weights import sha256_file

    entry = meta.get(BUNDLE_KEY)
    if not isinstance(entry, dict) or not entry.get("file"):
        return None
    path = Path(directory) / str(entry["file"])
    if not path.is_file():
        raise WeightsError(
            f"bundled backbone file {path} is missing (config.json records it): copy the whole model directory, "
            "or pass --weights PATH to the original weights file"
        )
    actual = sha256_file(path)
    if actual != str(entry.get("sha256", "")).lower():
        raise WeightsError(
            f"bundled backbone file {path} is damaged or was changed: sha256 {actual[:12]}… but config.json "
            f"records {str(entry.get('sha256'))[:12]}…; copy the model directory again, or pass --weights PATH"
        )
    return BundledBackbone(path, actual, str(entry.get("source_weights_sha256", "unknown")))


def check_weights_file(backbone: str, weights: str | None, directory: str | Path, *, given: bool) -> None:
    """Fail at load time, in one line naming the file, when the backbone's weights file is not there.

    ``given``: the caller passed ``weights`` (``--weights``); otherwise it is the path ``config.json`` recorded,
    and the message says so. Names that are no file (``None`` → bundled / downloaded default, ``"random"``) and
    backbones the registry does not build (AnomalyHybrid's pixels ignore ``weights``) are left alone.
    """
    from generalad.backbones import list_backbones, resolve_weights

    if weights in (None, "random") or str(backbone).strip().lower() not in list_backbones():
        return
    if given:
        resolve_weights(backbone, weights)  # the message fit gives: "... not found: PATH (--weights)"
        return
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file for {backbone} not found: {path} (recorded in {Path(directory) / 'config.json'}); "
            "pass --weights PATH to it, or fit with --bundle-backbone to keep the weights in the model directory"
        )
