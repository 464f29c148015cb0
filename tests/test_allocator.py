"""The CLI's tuned glibc malloc (generalad/allocator.py): re-exec once, keep the user's own settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from generalad.allocator import ENV_SWITCH, TUNABLES, _is_glibc, tuned_environment


def test_tunables_added_once_and_user_settings_kept():
    env = tuned_environment({"PATH": "/bin"})
    if not _is_glibc():
        assert env is None
        return
    assert env["GLIBC_TUNABLES"] == TUNABLES
    assert tuned_environment(env) is None  # the re-executed process does not loop
    kept = tuned_environment({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"})
    assert kept["GLIBC_TUNABLES"] == f"glibc.pthread.rseq=0:{TUNABLES}"
    assert tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"}) is None
    assert tuned_environment({ENV_SWITCH: "default"}) is None


@pytest.mark.skipif(not _is_glibc(), reason="glibc only")
@pytest.mark.parametrize("switch,tuned", [(None, True), ("default", False)])
def test_command_runs_with_tuned_malloc(switch, tuned):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", ENV_SWITCH, "GENERALAD_MALLOC_TUNED")}
    if switch:
        env[ENV_SWITCH] = switch
    done = subprocess.run([sys.executable, "-m", "generalad.cli", "doctor"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["malloc"].startswith("tuned") is tuned
