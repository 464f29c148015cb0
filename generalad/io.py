"""Atomic file output: a crash or Ctrl-C never leaves a half-written file at a final path.

Every writer here puts its bytes into a temporary sibling of the target (same directory, so the final
``os.replace`` is a same-filesystem rename and therefore atomic), fsyncs it, renames it into place and
then fsyncs the directory so the rename itself survives a power cut. Temporary names look like
``.<name>.<random>.gad-tmp`` (``.gad-old`` for a directory being replaced: ``TMP_SUFFIX``, ``OLD_SUFFIX``)
so that a cleanup can find leftovers of killed processes without touching anything else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Iterator, Mapping

import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are written: deployed inference (generalad.deploy) runs without it
    import torch

from generalad.errors import ConfigError, InputError

TMP_SUFFIX = ".gad-tmp"
OLD_SUFFIX = ".gad-old"

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- low-level helpers


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: fsync the directory entry (best effort: not supported on every OS/fs)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _prepare_parent(path: Path) -> Path:
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a file path")
    return parent


def _temp_file(path: Path) -> tuple[int, Path]:
    """Create an empty temp file beside ``path``; returns (fd, temp path)."""
    parent = _prepare_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=parent)
    return fd, Path(tmp)


def _commit(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _discard(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


# --------------------------------------------------------------------------- whole-file writes


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Open a temp sibling of ``path`` for writing; on clean exit fsync + rename into place.

    On an exception the temp file is removed and any previous file at ``path`` is left untouched.
    ``mode`` is "w" (text, ``\\n`` line endings) or "wb".
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    final = Path(path)
    fd, tmp = _temp_file(final)
    try:
        if mode == "wb":
            f: IO[Any] = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding, newline="\n")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, final)
    except BaseException:
        _discard(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the final path."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (``\\n`` line endings on every OS)."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


# --------------------------------------------------------------------------- hashing

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Streamed sha256 of a file, remembered per (path, mtime, size) for this process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with p.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


# --------------------------------------------------------------------------- JSON


def to_jsonable(obj: Any) -> Any:
    """Convert ``obj`` into strict-JSON values.

    NaN/±inf become ``None`` (strict JSON has no NaN and most readers reject it); numpy/torch scalars
    and arrays become Python numbers/lists; paths become strings; dataclasses become dicts; tuples and
    sets become lists; mapping keys become strings.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)  # also turns IntEnum / bool subclasses into plain ints
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    torch_module = sys.modules.get("torch")  # a tensor can only exist once torch is imported
    if torch_module is not None and isinstance(obj, torch_module.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    raise TypeError(f"to_jsonable: cannot convert {type(obj).__name__} to JSON")


def dumps_json(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` after :func:`to_jsonable` (``allow_nan=False`` as a guard)."""
    return json.dumps(to_jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def atomic_write_json(path: PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as indented strict JSON (NaN/inf → null, numpy converted) atomically."""
    return atomic_write_text(path, dumps_json(obj, indent=indent) + "\n")


class JsonlWriter:
    """Write JSON lines to a temp sibling of ``path``; :meth:`close` renames it into place.

    A crash before ``close`` leaves no file at ``path`` (only a ``.gad-tmp`` leftover), so readers never
    see a truncated last line. Use as a context manager: an exception aborts (temp removed, any
    previous file at ``path`` kept).
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        fd, self._tmp = _temp_file(self.path)
        self._file: IO[str] | None = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        self.count = 0

    def write(self, obj: Any) -> None:
        if self._file is None:
            raise ValueError(f"JsonlWriter({self.path}): write after close")
        self._file.write(dumps_json(obj, indent=None) + "\n")
        self.count += 1

    def close(self) -> Path:
        """Flush, fsync and rename into place (idempotent)."""
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.flush()
                os.fsync(f.fileno())
                f.close()
                _commit(self._tmp, self.path)
            except BaseException:
                f.close()
                _discard(self._tmp)
                raise
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; the final path is not touched."""
        if self._file is not None:
            f, self._file = self._file, None
            f.close()
            _discard(self._tmp)

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------- safetensors


def _cpu_tensors(tensors: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, non-aliasing tensors: safetensors refuses entries that share storage."""
    import torch

    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"safetensors: tensor names must be str, got {type(name).__name__}")
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(t))
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"safetensors: {name!r} is {type(t).__name__}, expected a tensor")
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:
            t = t.clone()  # clone only the aliases, not every tensor (memory banks can be large)
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def atomic_save_safetensors(
    path: PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Save ``tensors`` (+ string ``metadata``) as a safetensors file atomically.

    Written straight into the temp file (not via an in-memory bytes copy) so large memory banks are
    not held twice.
    """
    from safetensors.torch import save_file

    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            bad = f"{k!r}: {type(v).__name__}"
            raise TypeError(f"safetensors metadata must be dict[str, str]; bad entry {bad}")
    final = Path(path)
    fd, tmp = _temp_file(final)
    os.close(fd)
    try:
        save_file(_cpu_tensors(tensors), str(tmp), metadata=meta)
        _fsync_file(tmp)
        _commit(tmp, final)
    except BaseException:
        _discard(tmp)
        raise
    return final


def load_safetensors(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load all tensors (on CPU) and the string metadata of a safetensors file.

    A missing or corrupt file raises :class:`InputError` with a one-line message.
    """
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: safetensors file not found")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError, ... → one user-facing line
        reason = " ".join(str(e).split()) or type(e).__name__
        raise InputError(f"{p}: not a readable safetensors file ({reason})") from e
    return tensors, metadata


# --------------------------------------------------------------------------- directories


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                _fsync_file(p)
        _fsync_dir(Path(dirpath))


class AtomicDir:
    """Build a directory under a temp name and rename it to ``final_path`` only on success.

    ``with AtomicDir("runs/x/model") as tmp: ...`` — write into ``tmp`` (a sibling of the final path).
    On an exception the temp dir is removed and an existing final dir is left as it was. On success an
    existing final dir (empty or not) is replaced: it is moved aside, the new one renamed in, and the
    old one deleted; if the second rename fails the old one is moved back. (POSIX has no portable atomic
    directory swap, so a hard kill between the two renames can leave the previous version under its
    ``.gad-old`` name — never a half-written final dir.)
    """

    def __init__(self, final_path: PathLike) -> None:
        self.final = Path(final_path)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        parent = self.final.parent
        parent.mkdir(parents=True, exist_ok=True)
        if self.final.exists() and not self.final.is_dir():
            raise ConfigError(f"{self.final}: exists and is not a directory")
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", suffix=TMP_SUFFIX, dir=parent))
        return self.tmp

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.tmp is not None, "AtomicDir used without 'with'"
        tmp, self.tmp = self.tmp, None
        if exc_type is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        try:
            _fsync_tree(tmp)
            self._swap_in(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _swap_in(self, tmp: Path) -> None:
        final = self.final
        if not final.exists():
            os.rename(tmp, final)
        else:
            old = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}{OLD_SUFFIX}"
            os.rename(final, old)
            try:
                os.rename(tmp, final)
            except BaseException:
                os.rename(old, final)  # roll back: the previous version stays in place
                raise
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(final.parent)
