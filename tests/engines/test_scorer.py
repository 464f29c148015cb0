"""The Ray engine's actor class and shards, called in this process (no Ray needed): one chunk scored as the
local engine scores it, a user error returned as data, a chunk whose worker kept dying written as error rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from generalad.engines.ray import MAX_ATTEMPTS, SHARD_DIR, ChunkScorer, _attempts_path, read_shard, shard_path
from generalad.predict import predict_folder


@pytest.fixture(scope="module")
def setup(small_pc, tmp_path_factory):
    run, model, ds = small_pc
    root = tmp_path_factory.mktemp("scorer")
    shutil.copytree(run, root / "run")
    paths = []
    for i, s in enumerate(ds.test[:3]):
        shutil.copy(s.path, root / f"{i}.png")
        paths.append(str(root / f"{i}.png"))
    return root, model, paths


def _scorer(root: Path, run: Path, out: Path) -> ChunkScorer:
    return ChunkScorer(str(run), weights=None, device="cpu", chunk=3, threads=None, out_dir=str(out),
                       display_dir=str(out), save_maps=False, overlays=True)


def _batch(start: int, paths: list[str]) -> dict[str, np.ndarray]:
    return {"start": np.asarray([start]), "paths": np.asarray([json.dumps([paths, paths])])}


def test_one_call_writes_the_shard_the_local_engine_would_write(setup, tmp_path):
    root, model, paths = setup
    out = tmp_path / "out"
    (out / SHARD_DIR).mkdir(parents=True)
    got = _scorer(root, root / "run", out)(_batch(0, paths))
    assert got["n"].tolist() == [3] and got["error"].tolist() == [""]
    rows = read_shard(shard_path(out / SHARD_DIR, 0))
    local = [r.to_record() for r in predict_folder(model, paths, tmp_path / "local", chunk=3)]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "latency_ms"} for r in rs]  # noqa: E731
    assert strip(rows) == strip(json.loads(json.dumps(local)))
    assert not _attempts_path(out / SHARD_DIR, 0).exists()


def test_a_user_error_in_a_worker_comes_back_as_data(setup, tmp_path):
    root, _, paths = setup
    scorer = _scorer(root, tmp_path / "no_such_run", tmp_path / "out")  # must not raise inside Ray's actor init
    got = scorer(_batch(0, paths))
    assert got["error_type"].tolist() == ["InputError"] and "no_such_run" in got["error"][0]


def test_a_chunk_whose_worker_kept_dying_becomes_error_rows(setup, tmp_path):
    root, _, paths = setup
    out = tmp_path / "out"
    (out / SHARD_DIR).mkdir(parents=True)
    _attempts_path(out / SHARD_DIR, 6).write_text(f"{MAX_ATTEMPTS}\n")  # three attempts began, none finished
    got = _scorer(root, root / "run", out)(_batch(6, paths))
    assert got["n_failed"].tolist() == [3]
    rows = read_shard(shard_path(out / SHARD_DIR, 6))
    assert [r["path"] for r in rows] == paths
    assert all(r["error"] == f"the worker scoring images 6-8 died {MAX_ATTEMPTS} times (out of memory?)" for r in rows)
