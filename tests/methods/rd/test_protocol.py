"""The ARD DAGM protocol file on a synthetic DAGM layout: its models, datasets and seed-layout tables run
end to end (tiny options: EfficientNet-Lite0 teacher, 64 px, 2 epochs — mechanics, not the paper's numbers)."""

from __future__ import annotations

from pathlib import Path

import yaml

from generalad.benchmark import run_benchmark
from tests.data.synth import make_dagm_textured

PROTOCOL = Path(__file__).resolve().parents[3] / "benchmarks" / "protocols" / "ard_dagm.yaml"
TINY = {"rd": {"epochs": 2, "image_size": 64}, "ard": {"epochs": 2, "image_size": 64},
        "patchcore": {"image_size": 64}}


def test_dagm_protocol_runs_on_a_synthetic_layout_and_prints_the_seed_tables(tmp_path: Path) -> None:
    cfg = yaml.safe_load(PROTOCOL.read_text())
    root = make_dagm_textured(tmp_path / "dagm")
    cfg["datasets"][0].update(root=str(root), categories=["Class1", "Class2"])
    for m in cfg["models"]:  # keep names and labels, shrink the fit; the teacher has bundled weights
        m["options"] = {**m["options"], "backbone": "efficientnet_lite0", "device": "cpu", **TINY[m["name"]]}
    path = tmp_path / "dagm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rows = run_benchmark(path, out=tmp_path / "out", quiet=True)
    assert {(r["model"], r["unit"]) for r in rows} == {(m, c) for m in ("RD-WRN50", "ARD-WRN50", "PatchCore-WRN50")
                                                       for c in ("Class1", "Class2")}
    assert all(r["n_test"] == 11 and 0 <= r["pixel_auroc"] <= 1 and 0 <= r["pixel_aupro"] <= 1 for r in rows)
    md = (tmp_path / "out" / "table.md").read_text()
    assert "**Table 1: DAGM image AUROC**" in md and "**Table 2: DAGM pixel AUROC / PRO**" in md
    table2 = md.split("**Table 2")[1].splitlines()
    header = next(line for line in table2 if line.startswith("| dataset"))
    assert header == "| dataset | model | Class1 | Class2 | mean |"
    ard = next(line for line in table2 if "| ARD-WRN50 |" in line).split("|")[3:6]
    r = {x["unit"]: x for x in rows if x["model"] == "ARD-WRN50"}
    assert ard[0].strip() == f"{100 * r['Class1']['pixel_auroc']:.1f}/{100 * r['Class1']['pixel_aupro']:.1f}"
    mean_auroc = 50 * (r["Class1"]["pixel_auroc"] + r["Class2"]["pixel_auroc"])
    assert abs(float(ard[2].split("/")[0]) - mean_auroc) < 0.051
