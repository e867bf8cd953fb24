"""The FastAPI application over one loaded model: routes, error handlers, metrics, limits."""

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgeseq.errors import EdgeseqError

from .body_limit import BodySizeLimit
from .generation import OUTCOMES, Generation
from .http_errors import HTTPProblem, error_response, from_edgeseq
from .limits import ServeLimits
from .metrics import ServerMetrics
from .openai_routes import completion_router
from .v2_routes import v2_error, v2_router


def _field(loc) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def build_app(model, name: str, limits: ServeLimits | None = None, close_model: bool = False) -> FastAPI:
    """The server's application. `close_model`: close the model when the app shuts down
    (after uvicorn has drained the requests in flight)."""
    limits = limits or ServeLimits()
    metrics = ServerMetrics(model)
    generation = Generation(model, limits, metrics)

    @asynccontextmanager
    async def lifespan(app):
        yield
        metrics.detach()
        if close_model:
            model.close()

    app = FastAPI(title=f"edgeseq: {name}", lifespan=lifespan)
    app.include_router(completion_router(generation, name))
    app.include_router(v2_router(generation, name))

    def answer(request: Request, problem: HTTPProblem):
        return v2_error(problem) if request.url.path.startswith("/v2") else error_response(problem)

    def failed(request: Request, problem: HTTPProblem):
        """Every error answer is counted here, in the shape of the path's protocol."""
        metrics.requests.labels(OUTCOMES.get(problem.status, "error")).inc()
        return answer(request, problem)

    @app.exception_handler(HTTPProblem)
    async def on_problem(request: Request, e: HTTPProblem):
        return failed(request, e)

    @app.exception_handler(EdgeseqError)
    async def on_edgeseq(request: Request, e: EdgeseqError):
        return failed(request, from_edgeseq(e))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {"loc": ("body",), "msg": "invalid request"}
        return failed(request, HTTPProblem(422, f"{_field(first['loc'])}: {first['msg']}",
                                           "see the request schema at /docs or /openapi.json"))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, e: StarletteHTTPException):
        fixes = {404: "see /docs for the endpoints", 405: "see /docs for each endpoint's method"}
        return failed(request, HTTPProblem(e.status_code, str(e.detail), fixes.get(e.status_code)))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, e: Exception):
        return failed(request, HTTPProblem(500, f"internal error: {type(e).__name__}: {e}", "report this"))

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return BodySizeLimit(app, limits.max_body_bytes) if limits.max_body_bytes else app
