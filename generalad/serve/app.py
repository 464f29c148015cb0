"""``generalad serve``: a local web app and JSON API over one fitted or exported model (docs/INSPECT.md).

Routes (JSON unless said otherwise; every error is ``{"detail": "<one line>"}``)::

    GET  /                      the page (static/index.html; its JS and CSS are package files, no CDN)
    GET  /api/model             the model card
    POST /api/predict           multipart field ``file`` → a predictions.jsonl row + original_size + overlay_png
    GET  /api/images            --images: progress and one row per image (path, score, is_anomalous)
    GET  /api/images/predict?path=REL   --images: as /api/predict, for a file of the folder
    GET  /api/images/thumb?path=REL     --images: JPEG thumbnail
    GET  /api/images/file?path=REL      --images: the original file

Status codes: 400 undecodable / empty / unusable input, 404 a path outside the folder index (or no
``--images``), 413 a body over ``max_upload_bytes`` or an image over ``max_pixels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from generalad.errors import GeneralADError
from generalad.serve.folder import FolderIndex, NotInFolder
from generalad.serve.limits import LimitsMiddleware
from generalad.serve.model import ImageTooLarge, ServedModel

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD_MB = 20.0


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def create_app(served: ServedModel, *, images: FolderIndex | None = None,
               max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20)) -> FastAPI:
    """The FastAPI app over ``served`` (and the folder ``images``, whose scoring the caller starts)."""
    app = FastAPI(title="generalad serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(LimitsMiddleware, max_body_bytes=max_upload_bytes)
    _add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/model")
    def model_card() -> dict[str, Any]:
        return {**served.card(), "images_folder": str(images.root.resolve()) if images else None,
                "max_upload_bytes": max_upload_bytes, "max_pixels": served.max_pixels}

    @app.post("/api/predict")
    def predict(file: UploadFile = File(...)) -> dict[str, Any]:
        data = file.file.read()
        name = Path((file.filename or "upload").replace("\\", "/")).name or "upload"
        return served.predict(served.decode_upload(data, name), name)

    def folder() -> FolderIndex:
        if images is None:
            raise HTTPException(404, "no --images folder was given to generalad serve")
        return images

    @app.get("/api/images")
    def images_status() -> dict[str, Any]:
        return folder().status()

    @app.get("/api/images/predict")
    def images_predict(path: str = Query(...)) -> dict[str, Any]:
        file = folder().resolve(path)
        return served.predict(served.decode_path(file), path)

    @app.get("/api/images/thumb")
    def images_thumb(path: str = Query(...)) -> Response:
        # the folder is fixed for the server's life: let the browser keep thumbnails while the table refreshes
        return Response(folder().thumbnail(path), media_type="image/jpeg", headers={"cache-control": "max-age=3600"})

    @app.get("/api/images/file")
    def images_file(path: str = Query(...)) -> FileResponse:
        return FileResponse(folder().resolve(path))

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotInFolder)
    async def not_in_folder(_request: Request, err: NotInFolder) -> JSONResponse:
        return JSONResponse({"detail": _one_line(err)}, status_code=404)

    @app.exception_handler(ImageTooLarge)
    async def too_large(_request: Request, err: ImageTooLarge) -> JSONResponse:
        return JSONResponse({"detail": _one_line(err)}, status_code=413)

    @app.exception_handler(GeneralADError)
    async def user_error(_request: Request, err: GeneralADError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(err)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("body", "query"))
        hint = " (POST the image as multipart/form-data in the field 'file')" if where == "file" else ""
        return JSONResponse({"detail": _one_line(f"{where or 'request'}: {first.get('msg', 'invalid')}{hint}")},
                            status_code=400)
