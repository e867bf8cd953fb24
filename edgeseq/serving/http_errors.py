"""Every error the server answers is JSON that names the problem and the fix.

Runtime errors map to statuses by kind (edgeseq/errors.py): bad input 400, queue full 429
(with Retry-After), deadline 504, a failed step 500, a closed model 503.
"""

from fastapi.responses import JSONResponse

from edgeseq.errors import DeadlineError, EdgeseqError, ModelClosedError, QueueFullError, StepError

RETRY_AFTER_S = 1
STATUS = [(QueueFullError, 429), (DeadlineError, 504), (StepError, 500), (ModelClosedError, 503)]
KIND = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found", 413: "request_too_large", 422: "invalid_request_error",
        429: "queue_full", 500: "internal_error", 503: "unavailable", 504: "deadline_exceeded"}


class HTTPProblem(Exception):
    """An error the server answers with `status` and a JSON body."""

    def __init__(self, status: int, problem: str, fix: str | None = None):
        super().__init__(problem)
        self.status, self.problem, self.fix = status, problem, fix


def status_of(error: EdgeseqError) -> int:
    return next((status for kind, status in STATUS if isinstance(error, kind)), 400)


def from_edgeseq(error: EdgeseqError) -> HTTPProblem:
    return HTTPProblem(status_of(error), error.problem, error.fix)


def error_body(problem: HTTPProblem) -> dict:
    """OpenAI's error shape, with the fix beside the message."""
    return {"error": {"message": problem.problem, "fix": problem.fix, "type": KIND.get(problem.status, "error"),
                      "code": problem.status}}


def retry_after(problem: HTTPProblem) -> dict[str, str] | None:
    """The header a full queue's 429 carries (both protocols)."""
    return {"Retry-After": str(RETRY_AFTER_S)} if problem.status == 429 else None


def error_response(problem: HTTPProblem) -> JSONResponse:
    return JSONResponse(error_body(problem), status_code=problem.status, headers=retry_after(problem))
