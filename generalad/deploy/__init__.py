"""Deployed inference without torch: ``Inferencer(EXPORT_DIR).predict(image)`` (docs/DEPLOY.md).

Imports numpy, Pillow, scipy (regions) and the runtime only; tests/deploy/test_no_torch.py proves it in a
fresh interpreter.
"""

from generalad.deploy.inferencer import META_FILE, Inferencer, is_export_dir, read_deploy_meta

__all__ = ["META_FILE", "Inferencer", "is_export_dir", "read_deploy_meta"]
