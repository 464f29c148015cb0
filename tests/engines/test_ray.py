"""``generalad predict --engine ray`` on a local 2-CPU Ray cluster (issue 19): the local engine's rows and
overlays, error rows, resume, and a worker killed mid-run.

One cluster for the module (``ray.init(num_cpus=2)``); every run starts its own 2-actor pool, each actor
loading the model once. Rows are compared with the local engine at the same intra-op thread count (1): all
fields but ``latency_ms`` must be equal, and the overlays byte for byte (docs/SCALE.md, "Same rows").
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from generalad.cli import main  # noqa: E402
from generalad.engines.ray import SHARD_DIR, predict_ray, shard_path  # noqa: E402
from generalad.predict import predict_folder  # noqa: E402

CHUNK = 2
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own DataContext fields


@pytest.fixture(scope="module")
def cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(small_pc):
    return small_pc


def _images(ds, root: Path, n: int, broken: int | None = None) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(ds.test[:n]):
        p = root / f"{i}_{Path(s.path).name}"
        shutil.copy(s.path, p)
        paths.append(str(p))
    if broken is not None:
        data = Path(paths[broken]).read_bytes()
        Path(paths[broken]).write_bytes(data[: len(data) // 2])
    return paths


def _local(model, paths, out):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the ray workers' thread count (1 CPU each on this 2-CPU cluster)
    try:
        predict_folder(model, paths, out, chunk=CHUNK)
    finally:
        torch.set_num_threads(before)


def _comparable(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "latency_ms"} for r in rows]


def _same_outputs(a: Path, b: Path) -> None:
    assert _comparable(a) == _comparable(b)
    names = sorted(p.name for p in (a / "images").iterdir())
    assert names == sorted(p.name for p in (b / "images").iterdir())
    for n in names:
        assert (a / "images" / n).read_bytes() == (b / "images" / n).read_bytes(), n
    listed = [p.read_text() if p.exists() else None for p in (a / "failed.txt", b / "failed.txt")]
    assert listed[0] == listed[1]


def _markers(log: Path, what: str) -> dict[int, int]:
    """{chunk start: pid} of the marker files ``<pid>.<what>-<start>``."""
    out = {}
    for p in log.iterdir():
        pid, _, rest = p.name.partition(".")
        if rest.startswith(what + "-"):
            out[int(rest.split("-")[1])] = int(pid)
    return out


def test_cli_ray_engine_writes_the_local_engines_rows_overlays_and_resumes(cluster, model_dir, tmp_path, capsys):
    run, model, ds = model_dir
    paths = _images(ds, tmp_path / "imgs", 7, broken=3)
    _local(model, paths, tmp_path / "local")
    out = tmp_path / "ray"
    argv = ["predict", "--engine", "ray", "--run", str(run), *paths, "--out", str(out), "--workers", "2",
            "--threads", "1", "--chunk", str(CHUNK), "--quiet"]
    assert main(argv) == 2  # one file failed: every other image scored, then the one line
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"generalad: error: 1 of 7 files could not be read (first: cannot decode image {paths[3]}: image file is "
        f"truncated); list: {out / 'failed.txt'}"]
    stats = json.loads(captured.out)
    assert stats["engine"] == "ray" and stats["workers"] == 2 and stats["n_chunks_run"] == 4 and stats["n_failed"] == 1
    _same_outputs(out, tmp_path / "local")
    assert (out / "predictions.csv").read_text().splitlines()[0].endswith(",error")

    # resume: drop one finished shard (as a run killed before it would have left it); the rerun scores that
    # chunk and the one with the error row, and reuses the other two
    shard_path(out / SHARD_DIR, 4).unlink()
    rows, stats = predict_ray(run, paths, out, workers=2, threads=1, chunk=CHUNK, hooks={"log_dir": str(tmp_path)})
    assert stats["n_chunks_run"] == 2 and stats["n_reused"] == 3
    assert sorted(_markers(tmp_path, "done")) == [2, 4]
    _same_outputs(out, tmp_path / "local")



def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(cluster, model_dir, tmp_path):
    run, model, ds = model_dir
    paths = _images(ds, tmp_path / "imgs", 8)
    _local(model, paths, tmp_path / "local")
    log = tmp_path / "log"
    log.mkdir()
    out = tmp_path / "ray"
    result: dict = {}

    def job():
        try:
            result["value"] = predict_ray(run, paths, out, workers=2, threads=1, chunk=CHUNK,
                                          hooks={"log_dir": str(log), "delay_s": 1.0})
        except BaseException as err:  # noqa: BLE001 — reported by the assertion below
            result["error"] = err

    thread = threading.Thread(target=job)
    thread.start()
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline and thread.is_alive():
        begun, done = _markers(log, "begin"), _markers(log, "done")
        busy = [(start, pid) for start, pid in begun.items() if start not in done]
        if busy:
            victim = busy[0]
            os.kill(victim[1], signal.SIGKILL)  # mid-chunk: inside the 1 s delay, before its shard is written
        time.sleep(0.05)
    thread.join(timeout=180)
    assert not thread.is_alive(), "the ray run did not finish after a worker was killed"
    assert "error" not in result, result.get("error")
    assert victim is not None, "no chunk was in flight to kill"
    rows, stats = result["value"]
    assert [r["path"] for r in rows] == paths  # none lost, none duplicated, input order
    _same_outputs(out, tmp_path / "local")
    inits = [p for p in log.iterdir() if p.name.endswith(".init")]
    assert len(inits) >= 3  # the two workers and the one Ray started again
    start, killed = victim
    assert _markers(log, "done")[start] != killed  # the killed chunk was finished by another process

    # a rerun finds every image recorded: nothing is scored and no worker starts
    rows, stats = predict_ray(run, paths, out, workers=2, threads=1, chunk=CHUNK)
    assert stats["n_chunks_run"] == 0 and stats["workers"] == 0 and stats["n_reused"] == len(paths)
    assert [r["path"] for r in rows] == paths and not (out / "failed.txt").exists()
