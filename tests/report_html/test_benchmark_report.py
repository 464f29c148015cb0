"""``generalad benchmark`` writes report.html: its table, a chart, every row's stamps, links to each run's report."""

from __future__ import annotations

import json
import re

import yaml

from generalad.cli import main
from generalad.demo import make_synthetic_category


def test_benchmark_writes_a_self_contained_page_linking_each_run_report(tmp_path):
    for name, seed in (("alpha", 0), ("beta", 1)):
        make_synthetic_category(tmp_path / "data" / name, n_train=8, n_good=3, n_per_defect=2, size=64, seed=seed)
    cfg = {
        "out": str(tmp_path / "bench"),
        "models": [{"name": "patchcore", "label": "PC", "options": {"backbone": "efficientnet_lite0", "image_size": 64,
                                                                     "calibration_min": 2}}],
        "datasets": [{"name": "synth", "root": str(tmp_path / "data"), "categories": ["alpha", "beta"]}],
    }
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["benchmark", str(tmp_path / "b.yaml"), "--quiet"]) == 0
    bench = tmp_path / "bench"
    text = (bench / "report.html").read_text()
    rows = [json.loads(x) for x in (bench / "results.jsonl").read_text().splitlines()]
    assert "<script" not in text and not re.search(r'(src|href)="(https?:)?//', text)
    assert len(re.findall(r'<img[^>]*src="data:image/png;base64,', text)) == 2  # image AUROC and pixel AUPRO charts
    csv_cells = (bench / "table.csv").read_text().splitlines()[1].split(",")
    assert all(f">{cell}</td>" in text for cell in csv_cells)  # the table's cells, as in table.csv
    for row in rows:
        link = f"{row['run_dir']}/report.html"
        assert f"href='{link}'" in text and (bench / link).is_file()
        assert row["weights_sha256"][:16] in text
