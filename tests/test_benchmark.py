"""``generalad benchmark``: models × datasets × categories → per-category table with a mean row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from generalad import benchmark, methods
from generalad.backbones import list_backbones
from generalad.benchmark import load_config
from generalad.cli import main
from generalad.data import LAYOUTS, ONE_CLASS_LAYOUTS, READER_OPTIONS, open_dataset, sample_shots
from generalad.data.cats_vs_dogs import CLASSES as CATS_DOGS
from generalad.data.cifar import CIFAR10_CLASSES, CIFAR100_SUPERCLASSES
from generalad.data.classfolder import resolve_normal_classes
from generalad.data.idx import FMNIST_CLASSES
from generalad.demo import make_synthetic_category
from generalad.errors import ConfigError
from generalad.methods import get_method, load_model
from generalad.methods.generalad.core import PRESETS
from tests.data.test_cats_vs_dogs import make_pet_images


def test_benchmark_table_with_two_categories(tmp_path, capsys):
    for name, seed in (("alpha", 0), ("beta", 1)):
        make_synthetic_category(tmp_path / "data" / name, n_train=16, n_good=4, n_per_defect=2, size=96, seed=seed)
    cfg = {
        "out": str(tmp_path / "bench"),
        "models": [{"name": "patchcore", "label": "PC", "options": {"backbone": "efficientnet_lite0", "image_size": 96}}],
        "datasets": [{"name": "synth", "root": str(tmp_path / "data"), "categories": ["alpha", "beta"]}],
        "save_models": True,
    }
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["benchmark", str(tmp_path / "b.yaml"), "--quiet"]) == 0
    kept = tmp_path / "bench" / "runs" / "synth_alpha_PC_s0" / "model"
    assert load_model(kept).name == "patchcore"  # save_models keeps every fitted model
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


# ------------------------------------------------------------ protocol files and YAML keys (no fits)

PROTOCOLS = Path(__file__).resolve().parents[1] / "benchmarks" / "protocols"
EXPECTED_PROTOCOLS = {
    "cifar10", "cifar100", "fmnist", "view", "cats_vs_dogs", "fgvc_aircraft", "stanford_cars", "mvtec_ad",
    "mvtec_loco", "visa", "mpdd", "few_shot_mvtec", "ard_dagm", "ard_novelty", "ard_mvtec_ad",
}  # fmt: skip
KNOWN_CLASSES = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_SUPERCLASSES, "fmnist": FMNIST_CLASSES,
                 "cats_vs_dogs": CATS_DOGS, "fgvc_aircraft": [str(i) for i in range(100)],
                 "stanford_cars": [str(i) for i in range(196)]}


@pytest.mark.parametrize("path", sorted(PROTOCOLS.glob("*.yaml")), ids=lambda p: p.stem)
def test_protocol_file_names_only_registered_things(path: Path) -> None:
    cfg = load_config(path)
    assert path.read_text().startswith("# ") and "generalad benchmark benchmarks/protocols/" in path.read_text()
    for m in cfg["models"]:
        model = get_method(m["name"])(**m.get("options", {}), seed=0)  # validates option names and preset
        assert model.config.backbone in list_backbones()
        if m["name"] == "generalad":
            assert m["options"]["preset"] in PRESETS
    for ds in cfg["datasets"]:
        layout = ds["layout"]
        assert layout in LAYOUTS and layout != "auto"
        assert set(ds.get("data_options", {})) <= set(READER_OPTIONS.get(layout, ()))
        if layout in ONE_CLASS_LAYOUTS:
            assert ds["normal_classes"] and not ds.get("categories")
            if layout in KNOWN_CLASSES:  # indices / names exist (View's names are checked by its reader test)
                resolve_normal_classes(ds["normal_classes"], KNOWN_CLASSES[layout], path.name)
        else:
            assert ds["categories"] and not ds.get("normal_classes")


def test_every_protocol_has_a_file() -> None:
    assert {p.stem for p in PROTOCOLS.glob("*.yaml")} == EXPECTED_PROTOCOLS


@pytest.mark.parametrize(
    ("change", "message"),
    [({"shots_mode": "sliding"}, "shots_mode must be one of"), ({"layout": "imagenet"}, "unknown layout"),
     ({"normal_class": 1}, "unknown dataset key"), ({"root": None, "drop_root": True}, "needs a 'root'")],
)
def test_load_config_rejects_typos(tmp_path: Path, change: dict, message: str) -> None:
    ds = {"name": "x", "root": "data/x"}
    cfg: dict = {"models": [{"name": "patchcore"}], "datasets": [ds]}
    if "shots_mode" in change:
        cfg.update(change)
    elif change.get("drop_root"):
        del ds["root"]
    else:
        ds.update(change)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "b.yaml")


class _Recorder:
    """Stands in for a model: records what ``fit`` got (no backbone, no training)."""

    fitted: list[list] = []

    def __init__(self, **options) -> None:
        self.options = options

    def fit(self, train, calibration=None, progress=False) -> None:
        _Recorder.fitted.append(list(train))


def _fake_evaluate(model, test, **kw) -> dict:
    return {"image_auroc": 0.5, "logical": {"image_auroc": 0.6}, "structural": {"image_auroc": 0.7},
            "backbone": "stub", "weights_sha256": "0" * 12, "selection": "last", "n_test": len(test)}


def test_layout_data_options_window_shots_and_loco_columns(tmp_path: Path, monkeypatch) -> None:
    root = make_pet_images(tmp_path / "pets", n=10)
    monkeypatch.setattr(methods, "get_method", lambda name: _Recorder)
    monkeypatch.setattr(benchmark, "evaluate", _fake_evaluate)
    monkeypatch.setattr(benchmark, "write_report", lambda run_dir: None)  # a stubbed evaluation leaves no results folder
    _Recorder.fitted = []
    cfg = {
        "out": str(tmp_path / "bench"), "seeds": [3], "shots": [2], "shots_mode": "window",
        "models": [{"name": "stub", "label": "S"}],
        "datasets": [{"name": "pets", "root": str(root), "layout": "cats_vs_dogs", "normal_classes": ["cat"],
                      "data_options": {"split_seed": 5}}],
    }
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(cfg))
    rows = benchmark.run_benchmark(tmp_path / "b.yaml", quiet=True)
    full = open_dataset(root, layout="cats_vs_dogs", normal_class="cat", split_seed=5).train
    assert _Recorder.fitted == [sample_shots(full, 2, seed=3, mode="window")] == [full[3:5]]
    assert rows[0]["shots_mode"] == "window"
    assert rows[0]["train_files"] == [s.path for s in full[3:5]]  # the few-shot subset is listed
    assert (rows[0]["logical_image_auroc"], rows[0]["structural_image_auroc"]) == (0.6, 0.7)
    md = (tmp_path / "bench" / "table.md").read_text()
    header, _, row = md.splitlines()[:3]
    assert "S (2-shot) logical_image_auroc" in header and "S (2-shot) structural_image_auroc" in header
    assert row.split("|")[3:6] == [" 50.0 ", " 60.0 ", " 70.0 "]


def test_layout_table_rows_per_unit_with_model_dataset_columns_and_seed_means() -> None:
    """The one-class layout (ARD Table 3): a row per class, model × dataset columns, a mean row."""
    from generalad.benchmark import layout_table

    rows = [{"dataset": d, "model": m, "unit": u, "seed": s, "image_auroc": v}
            for d, m, u, s, v in [("mnist", "RD", "0", 0, 0.9), ("mnist", "RD", "0", 1, 0.8), ("mnist", "RD", "1", 0, 1.0),
                                  ("mnist", "ARD", "0", 0, 0.95), ("mnist", "ARD", "1", 0, 0.97)]]
    md = layout_table(rows, {"title": "Table 3", "rows": "unit", "metrics": ["image_auroc"]}).splitlines()
    assert md[0] == "**Table 3** (image_auroc, %)"
    assert md[2] == "| unit | RD mnist | ARD mnist |"
    assert md[4] == "| 0 | 85.0 | 95.0 |" and md[5] == "| 1 | 100.0 | 97.0 |"
    assert md[6] == "| **mean** | 92.5 | 96.0 |"  # mean over classes of the seed means


def test_bad_table_spec_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("models: [{name: patchcore}]\ndatasets: [{root: x}]\ntables: [{rows: columns, metrics: [image_auroc]}]\n")
    with pytest.raises(ConfigError, match="rows: model\\|unit"):
        load_config(path)
    path.write_text("models: [{name: patchcore}]\ndatasets: [{root: x}]\ntables: [{rows: unit, metrics: [f1]}]\n")
    with pytest.raises(ConfigError, match="unknown table metric"):
        load_config(path)
