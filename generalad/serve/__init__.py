"""``generalad serve``: look at a model's decisions in a browser, locally (docs/INSPECT.md).

``build_app(model, run, images=...)`` gives the FastAPI app (tests use it with FastAPI's TestClient);
``serve(...)`` runs it with uvicorn. Safe by default: binds to 127.0.0.1, limits the upload size and the
decoded image size, serves files only from the ``--images`` index, answers bad input with HTTP 400 and a
one-line message and keeps serving.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from generalad.serve.model import DEFAULT_MAX_PIXELS, ServedModel

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_app(model: Any, run: str | Path, *, images: str | Path | None = None, max_upload_mb: float | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS, score_folder: bool = True):
    """(FastAPI app, ServedModel, FolderIndex | None); the folder is scored in the background when asked."""
    from generalad.serve.app import DEFAULT_MAX_UPLOAD_MB, create_app
    from generalad.serve.folder import FolderIndex

    served = ServedModel(model, run, max_pixels=max_pixels)
    folder = FolderIndex(images, served) if images is not None else None
    mb = DEFAULT_MAX_UPLOAD_MB if max_upload_mb is None else float(max_upload_mb)
    app = create_app(served, images=folder, max_upload_bytes=int(mb * 2**20))
    if folder is not None and score_folder:
        folder.start()
    return app, served, folder


def serve(model: Any, run: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **kwargs: Any) -> None:
    """Run the app with uvicorn until Ctrl-C."""
    import uvicorn

    app, served, _ = build_app(model, run, **kwargs)
    if host not in LOOPBACK:  # the app has no authentication: say so where the user will read it
        print(f"generalad: warning: serving on {host}: anyone who can reach this machine on port {port} can "
              "use the model and read the --images folder (no authentication)", file=sys.stderr)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        served.close()


__all__ = ["build_app", "serve", "ServedModel", "DEFAULT_HOST", "DEFAULT_PORT"]
