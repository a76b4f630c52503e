"""The web application of `t2i serve`: one static page (three views) over a small JSON API.

FastAPI over a hand-written page rather than Gradio: the page needs a runs table, live curves and a snapshot
slider that Gradio's components do not give, Gradio's install is several times t2i's web needs and reaches out
to the internet at start, and a plain page keeps the browser tests on stable element ids.

    GET  /                          the page (static/index.html, app.js, style.css)
    GET  /api/models                models, embeddings, aligners, CLIPs, the limits
    POST /api/generate              {prompts, models, seed, n, options, embeds, aligner, rerank_clip} -> {id}
    GET  /api/jobs/{id}             progress and the images so far
    GET  /api/jobs/{id}/images/{k}.png, /api/jobs/{id}/grid.png?model=ID
    GET  /api/runs, /api/run?path=RUN, /api/file?path=RUN/fakes-000100.png

Errors are JSON `{"error": message}` with a 4xx status; nothing answers with a stack trace.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from t2i.errors import T2IError
from t2i.serve import Limits
from t2i.serve.jobs import Worker, parse_request
from t2i.serve.models import Catalog
from t2i.serve.runs import inside, list_runs, run_detail

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 64 * 1024           # bytes of a request body: prompts and options, never more
SERVED = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def create_app(runs: Path | None, limits: Limits | None = None, device: str = "cpu", warm: bool = True):
    """The FastAPI app serving `runs` (None: only the embedded default model)."""
    limits = limits or Limits()
    catalog = Catalog(runs)
    worker = Worker(catalog, limits, device)
    if warm:
        worker.warm()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        worker.close()

    app = FastAPI(title="t2i serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.worker = worker

    def error(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(T2IError)
    async def user_error(request: Request, e: T2IError):
        return error(str(e))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return error(f"bad request: {where or 'body'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error(str(e.detail), e.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):   # no trace to the page; the console has it
        import traceback

        traceback.print_exception(e)
        return error(f"internal error: {type(e).__name__}: {e}", 500)

    @app.middleware("http")
    async def bounded_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
            return error(f"request body of {size} bytes; at most {MAX_BODY}", 413)
        return await call_next(request)

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/models")
    def models():
        return {"models": catalog.models(), **catalog.extras(), "limits": vars(limits), "runs": bool(runs)}

    @app.post("/api/generate")
    async def generate(request: Request):
        body = await request.body()
        if len(body) > MAX_BODY:
            return error(f"request body of {len(body)} bytes; at most {MAX_BODY}", 413)
        import json

        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return error("the request body is not JSON")
        job = worker.submit(parse_request(data, limits, catalog))
        return {"id": job.id}

    def job_of(job_id: str):
        job = worker.jobs.get(job_id)
        if job is None:
            raise T2IError(f"no job {job_id!r} (finished jobs are kept only while newer ones leave room)")
        return job

    @app.get("/api/jobs/{job_id}")
    def job_view(job_id: str):
        job = job_of(job_id)
        return job.view(worker.position(job))

    @app.get("/api/jobs/{job_id}/images/{k}.png")
    def job_image(job_id: str, k: int):
        job = job_of(job_id)
        if not 0 <= k < len(job.images):
            raise T2IError(f"job {job_id} has no image {k} (it has {len(job.images)})")
        im = job.images[k]
        name = f"t2i-{job_id}-{k:03d}-seed{im['seed']}.png"
        return Response(job.images[k]["png"], media_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="{name}"'})

    @app.get("/api/jobs/{job_id}/grid.png")
    def job_grid(job_id: str, model: str):
        job = job_of(job_id)
        return Response(worker.grid(job, model), media_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="t2i-{job_id}-grid.png"'})

    def root() -> Path:
        if runs is None:
            raise T2IError("the server was started without --runs; start it with --runs DIR to see runs")
        return runs

    @app.get("/api/runs")
    def runs_table():
        return {"runs": list_runs(root()) if runs is not None else []}

    @app.get("/api/run")
    def run_view(path: str):
        return run_detail(root(), path)

    @app.get("/api/file")
    def run_file(path: str):
        file = inside(root(), path)
        if file.suffix.lower() not in SERVED:
            raise T2IError(f"{path!r}: only pictures ({', '.join(SERVED)}) are served")
        if not file.is_file():
            raise HTTPException(404, f"{path!r} does not exist")
        return FileResponse(file, media_type=SERVED[file.suffix.lower()])

    return app
