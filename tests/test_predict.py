"""The local predict engine: an unreadable file becomes an error row, every other image is scored (issue 19).

Real bottle images and the suite's small real PatchCore (4 training images, 64 px); chunks of 2 so that a run has
good chunks and a salvaged one.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from generalad.cli import main
from generalad.data import Sample
from generalad.errors import InputError
from generalad.predict import FailedImage, UnreadableFiles, predict_folder, predict_samples, raise_for_failures
from generalad.report import COLUMNS


@pytest.fixture(scope="module")
def model_dir(small_run, bottle):
    """The suite's shared small PatchCore (tests/conftest.py): (run directory, model, bottle dataset)."""
    model, run = small_run
    return run, model, bottle


@pytest.fixture(scope="module")
def folder(model_dir, tmp_path_factory):
    """5 bottle test images; the third (index 2) truncated to half its bytes."""
    _, _, ds = model_dir
    root = tmp_path_factory.mktemp("imgs")
    paths = []
    for i, s in enumerate(ds.test[:5]):
        p = root / f"{i}_{Path(s.path).name}"
        shutil.copy(s.path, p)
        paths.append(p)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) // 2])
    return root, [str(p) for p in paths]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _without_latency(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "latency_ms"} for r in rows]


def test_one_truncated_png_becomes_an_error_row_and_the_rest_is_scored(model_dir, folder, tmp_path):
    _, model, _ = model_dir
    _, paths = folder
    out = tmp_path / "pred"
    records = predict_folder(model, paths, out, chunk=2)
    assert [r.path for r in records] == paths  # input order, the failed file in its place
    assert isinstance(records[2], FailedImage) and "image file is truncated" in records[2].error
    assert all(not isinstance(r, FailedImage) for i, r in enumerate(records) if i != 2)
    rows = _rows(out)
    assert rows[2] == {"path": paths[2], "error": records[2].error}
    assert [r["path"] for r in rows] == paths and all("score" in r for i, r in enumerate(rows) if i != 2)
    assert (out / "failed.txt").read_text() == f"{paths[2]}\n"
    overlays = sorted(p.name for p in (out / "images").glob("*_overlay.png"))
    assert [n[:5] for n in overlays] == ["00000", "00001", "00003", "00004"]  # named by input index
    with open(out / "predictions.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == [*COLUMNS, "error"]
    assert table[3][0] == paths[2] and table[3][-1] == records[2].error and set(table[3][1:-1]) == {""}
    assert table[1][-1] == "" and float(table[1][COLUMNS.index("score")]) == records[0].pred_score
    with pytest.raises(UnreadableFiles, match=r"^1 of 5 files could not be read \(first: cannot decode image .*"
                                              r"; list: .*failed\.txt$"):
        raise_for_failures(records, out)


def test_good_chunks_score_exactly_as_in_a_clean_run(model_dir, folder, tmp_path):
    """Chunks stay aligned to multiples of the chunk size after a salvaged chunk: the other rows are unchanged."""
    _, model, _ = model_dir
    _, paths = folder
    good = [p for i, p in enumerate(paths) if i != 2]
    with_bad = predict_folder(model, paths, tmp_path / "a", chunk=2)
    clean = predict_folder(model, paths[:2] + [paths[1]] + paths[3:], tmp_path / "b", chunk=2)  # index 2 readable
    for i in (0, 1, 4):  # chunks [0, 1] and [4]: the same images in the same batches
        assert with_bad[i].to_record() | {"latency_ms": 0} == clean[i].to_record() | {"latency_ms": 0}
    # image 3 shared its chunk with the broken file: scored alone, equal to fp32 rounding
    assert with_bad[3].pred_score == pytest.approx(clean[3].pred_score, rel=1e-5)
    assert len([r for r in with_bad if not isinstance(r, FailedImage)]) == len(good)


def test_cli_exits_2_with_one_line_that_counts_and_points_at_the_list(model_dir, folder, tmp_path, capsys):
    run, _, _ = model_dir
    root, paths = folder
    out = tmp_path / "cli"
    assert main(["predict", "--run", str(run), str(root), "--out", str(out), "--quiet"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert err == [f"generalad: error: 1 of 5 files could not be read (first: cannot decode image {paths[2]}: "
                   f"image file is truncated); list: {out / 'failed.txt'}"]
    summary = json.loads(captured.out)
    assert summary["n_images"] == 5 and summary["n_failed"] == 1 and summary["engine"] == "local"
    assert len(list((out / "images").glob("*_overlay.png"))) == 4  # not an empty images/ any more


def test_a_clean_run_has_no_error_column_and_removes_a_stale_failed_list(model_dir, folder, tmp_path):
    _, model, _ = model_dir
    _, paths = folder
    out = tmp_path / "clean"
    predict_folder(model, paths, out)
    assert (out / "failed.txt").is_file()
    records = predict_folder(model, [p for i, p in enumerate(paths) if i != 2], out)
    raise_for_failures(records, out)  # nothing failed: no error
    assert not (out / "failed.txt").exists()
    assert (out / "predictions.csv").read_text().splitlines()[0] == ",".join(COLUMNS)


def test_every_file_unreadable(model_dir, tmp_path):
    _, model, _ = model_dir
    junk = [tmp_path / "a.png", tmp_path / "b.jpg"]
    junk[0].write_bytes(b"not an image")
    junk[1].write_bytes(b"")
    records = predict_folder(model, [str(p) for p in junk], tmp_path / "out")
    assert [type(r) for r in records] == [FailedImage, FailedImage]
    assert (tmp_path / "out" / "failed.txt").read_text().splitlines() == [str(p) for p in junk]


def test_an_error_that_names_no_input_is_not_turned_into_error_rows(model_dir, folder, monkeypatch):
    """A runtime failure (no file named in it) must still stop the run, not mark every image as unreadable."""
    _, model, _ = model_dir
    _, paths = folder

    def broken(*args, **kwargs):
        raise InputError("onnxruntime failed on a batch of 2: out of memory")
        yield

    monkeypatch.setattr(model, "infer_batches", broken)
    with pytest.raises(InputError, match="onnxruntime failed"):
        predict_samples(model, [Sample(path=p, label=-1, split="predict") for p in paths[:2]])


def test_threads_option_sets_torch_threads(model_dir, folder, tmp_path, capsys):
    run, _, _ = model_dir
    _, paths = folder
    before = torch.get_num_threads()
    try:
        assert main(["predict", "--run", str(run), paths[0], "--out", str(tmp_path / "t"), "--threads", "1",
                     "--quiet"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert main(["predict", "--run", str(run), paths[0], "--out", str(tmp_path / "t"), "--workers", "2"]) == 2
    assert "apply to --engine ray" in capsys.readouterr().err
