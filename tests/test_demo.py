"""The README's first command: generated data, PatchCore end to end, outputs on disk."""

import json

import numpy as np
from PIL import Image

from generalad.data import open_dataset
from generalad.demo import make_synthetic_category, run_demo


def test_synthetic_category_is_an_mvtec_layout_with_matching_masks(tmp_path):
    root = make_synthetic_category(tmp_path / "cat", n_train=4, n_good=2, n_per_defect=2, size=64)
    ds = open_dataset(root)
    assert len(ds.train) == 4 and len(ds.test) == 2 + 3 * 2 and ds.has_masks
    for sample in ds.test:
        if sample.label:
            mask = np.asarray(Image.open(sample.mask_paths[0]).convert("L"))
            assert mask.shape == (64, 64) and mask.max() == 255  # every defect left a mark
    again = make_synthetic_category(tmp_path / "again", n_train=4, n_good=2, n_per_defect=2, size=64)
    same = (again / "train" / "good" / "000.png").read_bytes() == (root / "train" / "good" / "000.png").read_bytes()
    assert same  # seeded: the demo data is reproducible


def test_demo_patchcore_end_to_end(tmp_path):
    summary = run_demo(tmp_path / "demo", model="patchcore", quiet=True)
    assert summary["patchcore"]["image_auroc"] >= 0.95  # the defects are obvious; a broken path scores ~0.5
    metrics = json.loads((tmp_path / "demo" / "patchcore" / "test" / "metrics.json").read_text())
    assert metrics["image_auroc"] == summary["patchcore"]["image_auroc"]
    assert (tmp_path / "demo" / "patchcore" / "model" / "model.safetensors").is_file()
    assert any((tmp_path / "demo" / "patchcore" / "predict").iterdir())
