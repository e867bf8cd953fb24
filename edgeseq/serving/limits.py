"""What one server accepts: the limits a request is checked against before it is queued."""

from dataclasses import dataclass


@dataclass
class ServeLimits:
    max_body_bytes: int = 1 << 20  # larger bodies get 413
    max_rows: int = 16  # prompts per request
    max_tokens: int = 1024  # cap on a request's max_tokens (also capped by max_positions)
    timeout_s: float = 60.0  # a request's deadline; past it, 504
    drain_timeout_s: float = 30.0  # on SIGTERM, how long requests in flight may finish

    def __post_init__(self):
        for name in ("max_body_bytes", "max_rows", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.timeout_s <= 0 or self.drain_timeout_s < 0:
            raise ValueError("timeout_s must be > 0 and drain_timeout_s >= 0")
