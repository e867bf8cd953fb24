"""The FastAPI application over one loaded model: routes, error handlers, metrics, limits,
and the middleware around them (outermost first): request ids and the access log, the API
key gate, the body size limit."""

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgeseq.errors import EdgeseqError

from .access_log import RequestLog
from .auth import AuthGate, AuthPolicy
from .body_limit import BodySizeLimit
from .generation import OUTCOMES, Generation
from .http_errors import HTTPProblem, error_response, from_edgeseq
from .limits import ServeLimits
from .metrics import ServerMetrics
from .openai_routes import completion_router
from .v2_routes import v2_error, v2_router


def _field(loc) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def build_app(model, name: str, limits: ServeLimits | None = None, close_model: bool = False,
              auth: AuthPolicy | None = None):
    """The server's application (an ASGI app; `.app` of the result's innermost layer is the
    FastAPI one). `close_model`: close the model when the app shuts down (after uvicorn has
    drained the requests in flight). `auth`: the API keys every route but the probes needs."""
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

    def failed_at(path: str, problem: HTTPProblem):
        """Every error answer is counted here, in the shape of the path's protocol."""
        metrics.requests.labels(OUTCOMES.get(problem.status, "error")).inc()
        return v2_error(problem) if path.startswith("/v2") else error_response(problem)

    def failed(request: Request, problem: HTTPProblem):
        return failed_at(request.url.path, problem)

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

    @app.get("/health/live")
    async def live():
        return {"live": True}

    @app.get("/health/ready")
    async def ready():
        up = generation.ready()
        return JSONResponse({"ready": up}, status_code=200 if up else 503)

    served = BodySizeLimit(app, limits.max_body_bytes) if limits.max_body_bytes else app
    if auth is not None and auth.keys:
        served = AuthGate(served, auth, failed_at)
    return RequestLog(served)


def fastapi_app(served) -> FastAPI:
    """The FastAPI application inside build_app's middleware (its routes, its schema)."""
    while not isinstance(served, FastAPI):
        served = served.app
    return served
