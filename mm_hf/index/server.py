"""`python -m mm_hf.index serve DIR`: a local search page (FastAPI + uvicorn) over a built index.

`GET /` is the page (a text box, a file picker, the top results as thumbnails with scores; `/?text=...` runs a
query on load), `POST /search` answers a text or an uploaded image/audio file as JSON, `GET /media/{id}` serves
an indexed item (images as thumbnails). Only indexed items are served: an id, never a path, names the file.
"""

import html
import io
import os
import tempfile
from importlib.resources import files
from typing import Annotated

import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, Response
from PIL import Image

from ..data.images import load_image
from ..errors import UserError
from .api import open_index, search
from .encoder import Embedder
from .items import MEDIA_EXTENSIONS
from .store import SearchIndex

THUMBNAIL_SIZE = (256, 256)


def create_app(index: SearchIndex, embedder: Embedder, title: str = "index") -> FastAPI:
    app = FastAPI(title=f"mm-hf search: {title}")
    modality, media_column = index.manifest["modality"], index.manifest["media_column"]
    about = (
        f"{index.manifest['count']} {modality} items, {index.manifest['index_type']} index, "
        f"model {index.manifest['model']}; search with text or an {modality} file."
    )
    page = (
        files("mm_hf.templates").joinpath("search.html").read_text()
        .replace("__TITLE__", html.escape(title)).replace("__ABOUT__", html.escape(about))
        .replace("__MODALITY__", modality).replace("__ACCEPT__", ",".join(MEDIA_EXTENSIONS[modality]))
    )  # fmt: skip

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        return page

    @app.post("/search")
    def run_search(
        text: Annotated[str | None, Form()] = None,
        file: Annotated[UploadFile | None, File()] = None,
        k: Annotated[int, Form()] = 10,
    ) -> dict:
        if file is not None and file.filename:
            suffix = os.path.splitext(file.filename)[1].lower()
            kind = next((m for m, ext in MEDIA_EXTENSIONS.items() if suffix in ext), modality)
            with tempfile.NamedTemporaryFile(suffix=suffix) as upload:
                upload.write(file.file.read())
                upload.flush()
                results = _answer(index, embedder, kind, upload.name, k)
            query = f"{kind} {file.filename}"
        elif text and text.strip():
            results, query = _answer(index, embedder, "text", text.strip(), k), repr(text.strip())
        else:
            raise HTTPException(400, "type a query or choose a file")
        for r in results:
            r["name"] = os.path.basename(str(r[media_column]))
        return {"query": query, "results": results}

    @app.get("/media/{item_id}")
    def media(item_id: int):
        if not 0 <= item_id < len(index.items):
            raise HTTPException(404, f"no item {item_id}")
        path = index.items[item_id][media_column]
        if not os.path.isfile(path):
            raise HTTPException(404, f"item {item_id}: {path} is gone")
        if modality == "audio":
            return FileResponse(path)
        image = load_image(path)
        image.thumbnail(THUMBNAIL_SIZE, Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    return app


def _answer(index, embedder, kind: str, query, k: int) -> list[dict]:
    try:
        return search(index, embedder, kind, query, k)
    except UserError as error:  # a wrong-modality file, an unreadable upload: the page shows the message
        raise HTTPException(400, str(error)) from error


def serve(index_dir: str, *, host: str = "127.0.0.1", port: int = 8000, model: str | None = None) -> None:
    index, embedder = open_index(index_dir, model=model)
    print(f"serving {index_dir} on http://{host}:{port}/")
    uvicorn.run(create_app(index, embedder, os.path.basename(os.path.abspath(index_dir))), host=host, port=port)
