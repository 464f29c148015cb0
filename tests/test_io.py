"""Atomic writers: content, NaN handling, no leftovers, and previous files kept on failure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from generalad.errors import InputError
from generalad.io import (
    AtomicDir,
    JsonlWriter,
    atomic_open,
    atomic_save_safetensors,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_safetensors,
)
from tests.helpers import stale_temp_paths


def _only(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def test_bytes_and_text_create_parents_and_leave_no_temp(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "a" / "c.txt", "héllo\n")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a" / "c.txt").read_text(encoding="utf-8") == "héllo\n"
    assert _only(tmp_path / "a") == ["b.bin", "c.txt"]


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("new, half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert _only(tmp_path) == ["x.txt"]


def test_json_converts_numpy_and_nonfinite(tmp_path: Path) -> None:
    obj = {
        "f": np.float32(1.5), "i": np.int64(3), "b": np.bool_(True), "nan": float("nan"),
        "inf": np.float64(np.inf), "arr": np.array([1.0, np.nan]), "t": torch.tensor([2, 3]),
        "p": tmp_path / "z", 4: (1, 2),
    }  # fmt: skip
    p = atomic_write_json(tmp_path / "o.json", obj)
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text and "\n  " in text  # strict JSON, indent 2
    d = json.loads(text)
    assert d == {"f": 1.5, "i": 3, "b": True, "nan": None, "inf": None, "arr": [1.0, None], "t": [2, 3],
                 "p": str(tmp_path / "z"), "4": [1, 2]}  # fmt: skip


def test_jsonl_writer_appears_only_on_close(tmp_path: Path) -> None:
    target = tmp_path / "p.jsonl"
    w = JsonlWriter(target)
    w.write({"a": 1, "x": math.nan})
    w.write({"a": np.int32(2)})
    assert not target.exists()  # a crash now leaves no half file at the final path
    assert len(stale_temp_paths(tmp_path)) == 1
    w.close()
    w.close()  # idempotent
    assert [json.loads(line) for line in target.read_text().splitlines()] == [{"a": 1, "x": None}, {"a": 2}]
    assert _only(tmp_path) == ["p.jsonl"]


def test_jsonl_writer_aborts_on_exception(tmp_path: Path) -> None:
    target = tmp_path / "p.jsonl"
    target.write_text('{"old": 1}\n')
    with pytest.raises(ValueError):
        with JsonlWriter(target) as w:
            w.write({"new": 1})
            raise ValueError("boom")
    assert target.read_text() == '{"old": 1}\n'
    assert _only(tmp_path) == ["p.jsonl"]


def test_safetensors_round_trip(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {"bank": base, "alias": base[1:], "t": base.t(), "h": torch.ones(2, dtype=torch.bfloat16)}
    p = atomic_save_safetensors(tmp_path / "m.safetensors", tensors, {"rule": "quantile", "n": "40"})
    loaded, meta = load_safetensors(p)
    assert meta == {"rule": "quantile", "n": "40"}
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype
    assert _only(tmp_path) == ["m.safetensors"]


def test_load_safetensors_errors_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_safetensors(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(InputError, match="bad.safetensors") as e:
        load_safetensors(bad)
    assert "\n" not in str(e.value)


def test_safetensors_rejects_non_string_metadata(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        meta = {"n": 3}
        atomic_save_safetensors(tmp_path / "m.safetensors", {"a": torch.zeros(1)}, meta)
    assert _only(tmp_path) == []


def test_atomic_dir_new_and_replace(tmp_path: Path) -> None:
    final = tmp_path / "model"
    with AtomicDir(final) as d:
        (d / "config.json").write_text("v1")
        assert not final.exists()
    assert (final / "config.json").read_text() == "v1"
    with AtomicDir(final) as d:
        (d / "other.json").write_text("v2")
    assert _only(final) == ["other.json"]  # replaced as a whole, no mix of versions
    assert _only(tmp_path) == ["model"]


def test_atomic_dir_failure_keeps_previous(tmp_path: Path) -> None:
    final = tmp_path / "model"
    final.mkdir()
    (final / "config.json").write_text("v1")
    with pytest.raises(KeyError):
        with AtomicDir(final) as d:
            (d / "config.json").write_text("v2")
            raise KeyError("fail")
    assert (final / "config.json").read_text() == "v1"
    assert _only(tmp_path) == ["model"]


def test_atomic_dir_into_empty_existing_dir(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    with AtomicDir(final) as d:
        (d / "a").write_text("x")
    assert _only(final) == ["a"]
