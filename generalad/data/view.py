"""View = Intel Image Classification, one-class protocol (docs/methods/generalad.md §10).

Layout (the Kaggle archive nests each split one extra level; both forms are accepted)::

    <root>/seg_train/<class>/*.jpg        or  <root>/seg_train/seg_train/<class>/*.jpg
    <root>/seg_test/<class>/*.jpg         or  <root>/seg_test/seg_test/<class>/*.jpg

Classes: buildings, forest, glacier, mountain, sea, street (index = sorted position). train = seg_train of the
normal class; test = all of seg_test, label 1 for the other classes. ``seg_pred`` (unlabelled) is ignored.
A copy renamed to ``train/`` + ``test/`` is a plain class-folder layout (classfolder.py).
"""

from __future__ import annotations

from pathlib import Path

from generalad.data._fs import absolute, child, require_dir
from generalad.data.classfolder import NormalClass, read_class_dirs
from generalad.data.sample import Dataset

TRAIN_DIR, TEST_DIR = "seg_train", "seg_test"


def split_dir(root: Path, name: str) -> Path:
    """``root/name``, or ``root/name/name`` when the download's extra level is there."""
    folder = require_dir(child(root, name))
    nested = child(folder, name)
    return nested if nested.is_dir() else folder


def is_view(root: Path) -> bool:
    return child(root, TRAIN_DIR).is_dir() and child(root, TEST_DIR).is_dir()


def read_view(root: str | Path, normal_class: NormalClass | None) -> Dataset:
    """Read Intel Image Classification under the one-class protocol."""
    root = require_dir(absolute(root))
    train_dir, test_dir = split_dir(root, TRAIN_DIR), split_dir(root, TEST_DIR)
    return read_class_dirs(root, train_dir, test_dir, normal_class, name="view")
