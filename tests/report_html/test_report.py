"""The HTML report: self-contained, the numbers of the results folder, charts by matplotlib, the gallery;
older folders and broken ones; ``generalad report`` and ``generalad test`` writing it."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from generalad.cli import main
from generalad.demo import make_synthetic_category
from generalad.errors import InputError
from generalad.evaluate import evaluate
from generalad.methods.patchcore import PatchCore
from generalad.report_html import write_report

IMG_SRC = re.compile(r'<img[^>]*\ssrc="([^"]*)"')


def _assert_self_contained(text: str) -> list[str]:
    """No script, no stylesheet link, nothing fetched: every image is a data URI. Returns the image sources."""
    assert "<script" not in text and "<link" not in text and "@import" not in text
    assert not re.search(r'(src|href)="(https?:)?//', text)
    sources = IMG_SRC.findall(text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    return sources


def test_report_shows_the_folder_numbers_charts_and_gallery(tile_res, tmp_path):
    res, metrics = tile_res
    out = write_report(res, tmp_path / "r.html")
    text = out.read_text()
    sources = _assert_self_contained(text)
    evidence = json.loads((res / "inspect.json").read_text())
    n_gallery = len(evidence["gallery"]["false_positives"]) + len(evidence["gallery"]["false_negatives"])
    assert len(sources) == 3 + n_gallery  # ROC+PR, histogram, PRO curve, then one per gallery case
    for key in ("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro"):
        assert f"<td class=\"num\">{100 * metrics[key]:.1f}</td>" in text, key
    for stamp in (metrics["weights_sha256"], metrics["backbone"], metrics["selection"], metrics["threshold_source"]):
        assert stamp in text
    for kind in metrics["per_defect_type"]:
        assert f"<td>{kind}</td>" in text
    assert "PRO curve" in text and "False positives" in text and "False negatives" in text


def test_report_without_masks_says_there_are_no_pixel_metrics(tile_model, tile_test, tmp_path):
    evaluate(tile_model, tile_test, out_dir=tmp_path, has_masks=False)
    text = write_report(tmp_path).read_text()
    _assert_self_contained(text)
    assert "no ground-truth masks: no pixel metrics and no PRO curve" in text
    assert (tmp_path / "report.html").is_file()


def test_report_of_a_folder_from_before_issue_18_says_what_is_missing(tile_res, tmp_path):
    res, _ = tile_res
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(res / "predictions.jsonl", old)
    metrics = json.loads((res / "metrics.json").read_text())
    del metrics["per_defect_type"]
    (old / "metrics.json").write_text(json.dumps(metrics))
    text = write_report(old).read_text()
    assert "No PRO curve recorded" in text and "No gallery recorded" in text and "No per-defect-type" in text


@pytest.mark.parametrize("damage, message", [
    ("missing_folder", "results folder not found"),
    ("no_metrics", "has no metrics.json"),
    ("bad_json", "metrics.json is not valid JSON"),
    ("bad_line", "predictions.jsonl line 2 is not valid JSON"),
    ("not_predictions", "predictions.jsonl line 1 has no pred_score"),
])  # fmt: skip
def test_broken_results_folder_is_one_line(tile_res, tmp_path, damage, message, capsys):
    res, _ = tile_res
    bad = tmp_path / "bad"
    shutil.copytree(res, bad)
    if damage == "missing_folder":
        shutil.rmtree(bad)
    elif damage == "no_metrics":
        (bad / "metrics.json").unlink()
    elif damage == "bad_json":
        (bad / "metrics.json").write_text("{not json")
    elif damage == "bad_line":
        lines = (bad / "predictions.jsonl").read_text().splitlines()
        (bad / "predictions.jsonl").write_text("\n".join([lines[0], lines[1][:20], *lines[2:]]) + "\n")
    else:
        (bad / "predictions.jsonl").write_text('{"path": "x"}\n')
    with pytest.raises(InputError, match=re.escape(message)):
        write_report(bad)
    assert main(["report", "--res", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("generalad: error: ") and message in err and "\n" not in err


def test_cli_test_writes_the_report_by_default_and_report_rewrites_it(tmp_path, capsys):
    data = make_synthetic_category(tmp_path / "data" / "synth", n_train=8, n_good=3, n_per_defect=2, size=64)
    model = PatchCore(backbone="efficientnet_lite0", image_size=64, device="cpu", precision="fp32", calibration_min=2)
    from generalad.data import open_dataset

    model.fit(open_dataset(data).train)
    run = model.save(tmp_path / "run")
    assert main(["test", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "res"), "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = tmp_path / "res" / "report.html"
    assert printed["report"] == str(report) and report.is_file()
    _assert_self_contained(report.read_text())
    assert "per-region overlap" not in report.read_text()  # charts are images: their text is not in the HTML
    assert main(["report", "--res", str(tmp_path / "res"), "--out", str(tmp_path / "again.html")]) == 0
    assert json.loads(capsys.readouterr().out)["report"] == str(tmp_path / "again.html")
    assert main(["test", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "res2"), "--quiet",
                 "--no-report"]) == 0
    assert not (tmp_path / "res2" / "report.html").exists() and (tmp_path / "res2" / "inspect.json").is_file()


def test_report_of_a_one_class_test_set_has_a_histogram_and_says_why_no_curves(tile_model, tile_test, tmp_path):
    good = [s for s in tile_test if s.label == 0][:3]
    evaluate(tile_model, good, out_dir=tmp_path, has_masks=True, gallery=0)
    text = write_report(tmp_path).read_text()
    assert "one class only: no ROC or PR curve" in text and "the PRO curve is undefined" in text
    assert len(_assert_self_contained(text)) == 1  # the histogram alone: no PRO curve without defects, no gallery
    assert json.loads((tmp_path / "inspect.json").read_text())["gallery"] == {"false_positives": [], "false_negatives": []}
