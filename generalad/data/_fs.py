"""Small filesystem helpers shared by the layout readers: sorted, case-insensitive, hidden-file-free."""

from __future__ import annotations

import os
from pathlib import Path

from generalad.errors import InputError

# Extensions are compared lower-cased, so ".PNG" (DAGM) and ".JPG" (VisA) match too.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def absolute(path: str | os.PathLike[str]) -> Path:
    """Absolute, normalised path without resolving symlinks (keeps the user's own names)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _visible(entry: Path) -> bool:
    # Skips ".DS_Store", macOS "._000.png" resource forks and editor droppings.
    return not entry.name.startswith(".")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and _visible(path) and path.is_file()


def require_dir(folder: Path) -> Path:
    """``folder`` itself, or InputError saying it is missing or not a folder."""
    if not folder.exists():
        raise InputError(f"folder not found: {folder}")
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    return folder


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (deterministic on every filesystem)."""
    require_dir(folder)
    return sorted((p for p in folder.iterdir() if is_image(p)), key=lambda p: p.name)


def require_images(folder: Path) -> list[Path]:
    """Like ``list_images`` but an empty result is an error naming the folder."""
    images = list_images(folder)
    if not images:
        raise InputError(f"no images found in {folder}")
    return images


def subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder``, sorted by name."""
    require_dir(folder)
    return sorted((p for p in folder.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)


def child(folder: Path, name: str) -> Path:
    """``folder/name``, matched case-insensitively when the exact spelling is absent.

    Returns the exact path (which may not exist) when nothing matches, so callers can name it in errors.
    """
    exact = folder / name
    if exact.exists() or not folder.is_dir():
        return exact
    lowered = name.lower()
    matches = sorted(p for p in folder.iterdir() if p.name.lower() == lowered)
    return matches[0] if matches else exact


def files_by_lower_name(folder: Path) -> dict[str, Path]:
    """Map lower-cased file name → path for one folder (empty when the folder is absent)."""
    if not folder.is_dir():
        return {}
    return {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_file() and _visible(p)}
