"""``avhgr serve``: one process, one model in memory, a page for people and an HTTP API for programs.

    GET  /              the page: drop or choose a file, or record from the camera; the emotion over time
    POST /api/predict   multipart field ``file`` (optional ``hop``, ``plot``): what ``avhgr predict --json`` prints
    GET  /api/model     what the model is (name, classes, inputs, experts) and its card
    GET  /healthz       alive, and how busy

FastAPI (typed endpoints, its OpenAPI schema at /openapi.json) with a small page of our own: everything it needs is
served by this process (no fonts, scripts or styles from elsewhere, no analytics), so it works with
no network at all. Gradio would bring its own front end of several megabytes and fetches from the
network by default; a page of about 8 KB does what this one needs.

What the server owes its users: it binds to 127.0.0.1 unless told otherwise; an upload over
``--max-upload-mb`` is refused with 413 as soon as that is known (from Content-Length, or while the
bytes arrive), before it is written whole; a file that is not media, is empty or truncated gets a 4xx
JSON error naming the problem (by the name the client gave, never a path of the server's); requests
beyond ``--workers`` wait in a queue of ``--queue`` and past it get 503 with Retry-After; a request
whose client has gone is dropped before its work starts, and between its steps; each request's
temporary folder is removed whatever happened; Ctrl-C or SIGTERM ends it cleanly (uvicorn's).
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from .errors import UserError

WEB = Path(__file__).resolve().parent / "web"
DEFAULT_HOP = 0.5
MIN_HOP = 0.1  # windows every 0.1 s at the least: the work of a request stays bounded by its length


class Cancelled(Exception):
    """The client went away: the rest of the work is not done."""


class Busy:
    """At most ``workers`` requests compute at once, ``queue`` more wait; the others are refused."""

    def __init__(self, workers: int, queue: int):
        self.workers, self.queue = workers, queue
        self.slots = asyncio.Semaphore(workers)
        self.admitted = 0  # computing or waiting
        self.seconds = 5.0  # a running estimate of one request's time, for Retry-After

    def admit(self) -> bool:
        if self.admitted >= self.workers + self.queue:
            return False
        self.admitted += 1
        return True

    def leave(self, took: float | None) -> None:
        self.admitted -= 1
        if took is not None:
            self.seconds = 0.8 * self.seconds + 0.2 * took

    def retry_after(self) -> int:
        return max(1, round(self.seconds * (self.queue + 1) / self.workers))


def log_bug(name: str, exc: BaseException) -> None:
    """A bug while answering a request: its traceback in the server's log, where an operator looks."""
    print(f"avhgr serve: an internal error while answering for {name}:", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)


def safe_name(name: str | None) -> str:
    """The client's file name, for messages only: its last component, printable, short."""
    name = Path(name or "upload").name
    name = re.sub(r"[^\w.\- ]", "_", name)[:80]
    return name or "upload"


def create_app(model, max_upload_mb: float = 50.0, workers: int = 1, queue: int = 8):
    """The FastAPI application serving ``model`` (an ``avhgr.api.Model``)."""
    from .plots import timeline_png

    # No /docs page: FastAPI's Swagger UI loads its scripts from a CDN. The schema stays at /openapi.json.
    app = FastAPI(title="avhgr", version=_version(), docs_url=None, redoc_url=None)
    limit = int(max_upload_mb * 2**20)
    busy = Busy(workers, queue)
    lock = threading.Lock()  # one model: the steps that touch its state take turns
    app.mount("/static", StaticFiles(directory=WEB), name="static")

    def error(status: int, message: str, **headers) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": model.name, "admitted": busy.admitted, "workers": workers, "queue": queue}

    @app.get("/api/model")
    def model_info() -> dict:
        return {**model.info(), "card": _card(model), "max_upload_mb": max_upload_mb}

    @app.post("/api/predict")
    async def predict(request: Request):
        """Multipart form: ``file`` (the video or audio), optional ``hop`` (seconds between windows:
        a timeline) and ``plot`` (true: the timeline as a PNG data URI, as ``predict --plot`` draws it)."""
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limit:
            return error(413, f"upload of {int(size) / 2**20:.1f} MB is over the limit of {max_upload_mb:g} MB")
        if not busy.admit():
            return error(503, "busy: every worker and queue place is taken; try again", **{"Retry-After": str(busy.retry_after())})
        folder = Path(tempfile.mkdtemp(prefix="avhgr-serve-"))
        started = None
        try:
            try:
                form = await _receive(request, folder, limit)
            except _Refused as exc:
                return error(exc.status, str(exc))
            if "file" not in form:
                return error(400, "no file: send it as the multipart form field 'file'")
            path, name = form["file"]
            if path.stat().st_size == 0:
                return error(400, f"{name}: the file is empty")
            try:
                hop = float(form["hop"]) if form.get("hop") not in (None, "") else None
            except ValueError:
                return error(422, f"hop must be a number of seconds, not {form['hop']!r}")
            if hop is not None and not hop >= MIN_HOP:
                return error(422, f"hop must be at least {MIN_HOP} s")
            plot = str(form.get("plot", "")).lower() in ("1", "true", "yes", "on")
            async with busy.slots:
                if await request.is_disconnected():
                    return error(499, "the client went away")
                started = time.time()
                cancel = threading.Event()
                job = asyncio.get_running_loop().run_in_executor(None, _work, model, path, name, hop, plot, folder, cancel, lock, timeline_png)
                while not job.done():
                    await asyncio.wait({job}, timeout=0.25)
                    if not job.done() and await request.is_disconnected():
                        cancel.set()
                try:
                    return JSONResponse(await job)
                except Cancelled:
                    return error(499, "the client went away")
                except UserError as exc:
                    status = 415 if type(exc).__name__ == "MediaError" else 422
                    return error(status, str(exc).replace(str(path), name))
                except Exception as exc:  # noqa: BLE001 - a bug, not the file's fault: JSON in words, and the server goes on
                    log_bug(name, exc)
                    return error(500, f"{name}: an internal error in avhgr ({type(exc).__name__}); the server goes on")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            busy.leave(None if started is None else time.time() - started)

    return app


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def _receive(request, folder: Path, limit: int) -> dict:
    """The multipart form, streamed: the ``file`` part to ``folder`` (counted as it arrives, refused
    past ``limit``), small fields as text. Returns {"file": (path, client name), field: value}."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise _Refused(400, "send the file as multipart/form-data, in the field 'file'")
    form: dict = {}
    state = {"headers": {}, "field": b"", "name": None, "out": None, "value": b"", "size": 0}

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["headers"][state["field"].lower()] = state["headers"].get(state["field"].lower(), b"") + data[start:end]
        state["field"] = b""

    def on_headers_finished():
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["name"] = disp.get(b"name", b"").decode("utf-8", "replace")
        if state["name"] == "file":
            client = safe_name(disp.get(b"filename", b"upload").decode("utf-8", "replace"))
            suffix = Path(client).suffix.lower() if re.fullmatch(r"\.[a-z0-9]{1,5}", Path(client).suffix.lower()) else ".bin"
            path = folder / f"upload{suffix}"
            state["out"] = path.open("wb")
            form["file"] = (path, client)

    def on_part_data(data, start, end):
        if state["out"] is not None:
            state["size"] += end - start
            if state["size"] > limit:
                raise _Refused(413, f"{form['file'][1]}: over the upload limit of {limit / 2**20:g} MB")
            state["out"].write(data[start:end])
        elif len(state["value"]) < 1000:
            state["value"] += data[start:end]

    def on_part_end():
        if state["out"] is not None:
            state["out"].close()
            state["out"] = None
        elif state["name"]:
            form[state["name"]] = state["value"].decode("utf-8", "replace")
        state.update(headers={}, name=None, value=b"")

    parser = MultipartParser(params[b"boundary"], {"on_header_field": on_header_field, "on_header_value": on_header_value,
                                                   "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
                                                   "on_part_end": on_part_end})  # fmt: skip
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except _Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken form is the client's: one line
        raise _Refused(400, f"the upload is not a readable multipart form ({type(exc).__name__})") from exc
    finally:
        if state["out"] is not None:
            state["out"].close()
    return form


def _work(model, path: Path, name: str, hop, plot: bool, folder: Path, cancel: threading.Event, lock: threading.Lock, timeline_png) -> dict:
    """One request's prediction, in a worker thread: decode and find the faces, then the model."""
    predictor = model._predictor
    if cancel.is_set():
        raise Cancelled()
    windows, meta = predictor.windows_of_file(path, hop if hop is not None else (DEFAULT_HOP if plot else None))
    if cancel.is_set():
        raise Cancelled()
    with lock:
        result, faces = predictor.result_of(name, windows, meta, timeline=hop is not None or plot, keep_faces=True)
    if plot:
        target = folder / "timeline.png"
        timeline_png(result["timeline"], predictor.classes, target, f"{name}: {result['emotion'] or 'no emotion'}", faces,
                     predictor.settings.window_seconds)  # fmt: skip
        result["timeline_png"] = "data:image/png;base64," + base64.b64encode(target.read_bytes()).decode()
        if hop is None:
            result.pop("timeline")
    return result


def _card(model) -> str:
    """The model's card as text: the built-in model's MODEL_CARD.md, or a run's summary."""
    from .builtin import HERE, is_builtin

    if is_builtin(model.name):
        card = {"builtin": HERE / "MODEL_CARD.md", "builtin:speech": HERE / "speech" / "MODEL_CARD.md",
                "builtin:face": HERE / "face" / "MODEL_CARD.md"}[model.name]  # fmt: skip
        return card.read_text() if card.exists() else ""
    report = Path(model.name) / "report.json"
    if report.exists():
        import json

        r = json.loads(report.read_text())
        acc = r.get("video_accuracy")
        return (f"Run folder {model.name}: {', '.join(r.get('classes', []))}; "
                + (f"test video accuracy {100 * acc:.1f} % on {r.get('videos')} videos." if acc is not None else "trained on every video (no test)."))  # fmt: skip
    return f"Run folder {model.name}."


def _version() -> str:
    from . import __version__

    return __version__


def serve(model_name=None, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float = 50.0, workers: int = 1, queue: int = 8,
          device: str = "auto", log=print) -> None:  # fmt: skip
    """Load the model once and serve until Ctrl-C or SIGTERM."""
    import uvicorn

    from .api import load_model

    model = load_model(model_name, device)
    log(f"avhgr serve: {model.description} on http://{host}:{port}/ (Ctrl-C to stop)")
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again under the
    # handlers it found: ours turn it into a normal end (exit status 0), not a death by signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    try:
        uvicorn.run(create_app(model, max_upload_mb, workers, queue), host=host, port=port, log_level="warning")
    except _Stopped:
        pass
    log("avhgr serve: stopped")


class _Stopped(Exception):
    pass


def _stop(signum, frame):
    raise _Stopped
