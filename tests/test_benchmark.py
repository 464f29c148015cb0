"""``generalad benchmark``: models × datasets × categories → per-category table with a mean row."""

from __future__ import annotations

import json

import yaml

from generalad.cli import main
from generalad.demo import make_synthetic_category


def test_benchmark_table_with_two_categories(tmp_path, capsys):
    for name, seed in (("alpha", 0), ("beta", 1)):
        make_synthetic_category(tmp_path / "data" / name, n_train=16, n_good=4, n_per_defect=2, size=96, seed=seed)
    cfg = {
        "out": str(tmp_path / "bench"),
        "models": [{"name": "patchcore", "label": "PC", "options": {"backbone": "efficientnet_lite0", "image_size": 96}}],
        "datasets": [{"name": "synth", "root": str(tmp_path / "data"), "categories": ["alpha", "beta"]}],
    }
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["benchmark", str(tmp_path / "b.yaml"), "--quiet"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "bench" / "results.jsonl").read_text().splitlines()]
    assert [r["unit"] for r in rows] == ["alpha", "beta"]
    assert all(0.0 <= r["image_auroc"] <= 1.0 and r["backbone"] == "efficientnet_lite0" for r in rows)
    md = (tmp_path / "bench" / "table.md").read_text()
    assert "| synth | alpha |" in md and "**mean**" in md and "PC image_auroc" in md
    mean_cell = [line for line in md.splitlines() if "**mean**" in line][0].split("|")[3].strip()
    expected = 100 * (rows[0]["image_auroc"] + rows[1]["image_auroc"]) / 2
    assert abs(float(mean_cell) - expected) < 0.051
    csv_lines = (tmp_path / "bench" / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("dataset,category,") and len(csv_lines) == 4
