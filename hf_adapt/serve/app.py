"""The FastAPI application: the model's routes, feedback, ``/health``, ``/ready``, ``/metrics`` and ``/docs``,
behind an API key (when set), a body-size limit and a per-client rate limit."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from hf_adapt.errors import DataError, HfAdaptError
from hf_adapt.feedback.log import FeedbackLog
from hf_adapt.serve.answers import AnswerStore
from hf_adapt.serve.batching import MicroBatcher
from hf_adapt.serve.config import ServeConfig
from hf_adapt.serve.metrics import Metrics
from hf_adapt.serve.models import Served
from hf_adapt.serve.rollout import Rollout

logger = logging.getLogger("hf_adapt.serve")

OPEN_ROUTES = ("/health", "/ready", "/metrics", "/docs", "/openapi.json", "/redoc")
PRUNE_AT = 10_000  # rate-limit buckets kept before the refilled ones are dropped


@dataclass
class Server:
    """What the routes share: the served model, the answer store, the feedback log, the batcher and metrics."""

    config: ServeConfig
    served: Served
    api_key: str | None = None
    user_salt: str | None = None
    store: AnswerStore = field(init=False)
    log: FeedbackLog = field(init=False)
    batcher: MicroBatcher = field(init=False)
    metrics: Metrics = field(init=False)
    rollout: Rollout = field(init=False)
    sync: Any = None  # a HubSync when feedback_repo is set

    def __post_init__(self) -> None:
        log_path, answers = self.config.log_paths()
        refresh = None
        if self.config.feedback_repo:
            from hf_adapt.serve.sync import HubSync

            self.sync = HubSync(self.config.feedback_repo, log_path.parent, [log_path, answers],
                                self.config.sync_minutes)
            refresh = self.sync.pull_answers
        self.store = AnswerStore(answers, self.config.record_inputs, refresh=refresh)
        self.log = FeedbackLog(log_path, user_salt=self.user_salt)
        self.metrics = Metrics(self.served.name, self.served.revision)
        self.rollout = Rollout(self, self.config.watch_interval)
        run = None
        if self.served.kind == "classifier":
            from hf_adapt.serve.classifier import run_batch

            self.served.model.batch_size = self.config.max_batch_size

            def run(items: list[Any]) -> list[Any]:
                served = self.served  # one version for the whole batch, named in each of its answers
                return [(prediction, served) for prediction in run_batch(served.model, items)]

        self.batcher = MicroBatcher(run, self.config.max_batch_size, self.config.max_wait_ms,
                                    on_batch=self.metrics.batch_size.observe)


class RateLimiter:
    """A token bucket per client address: ``rate`` requests a second, bursts of two seconds' worth."""

    def __init__(self, rate: float):
        self.rate, self.burst = rate, max(1.0, 2 * rate)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait_needed(self, client: str) -> float:
        """0 when the request may go, else the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) > PRUNE_AT:  # forget clients whose bucket has refilled: memory stays bounded
                self._buckets = {c: (k, t) for c, (k, t) in self._buckets.items()
                                 if k + (now - t) * self.rate < self.burst}
            tokens, last = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate


def _route_name(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def create_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import asyncio

        follow = asyncio.get_running_loop().create_task(server.rollout.follow()) if server.config.watch else None
        yield
        if follow is not None:
            follow.cancel()
        await server.batcher.close()
        if server.sync is not None:
            await asyncio.to_thread(server.sync.stop)

    app = FastAPI(title="hf-adapt serve", version=server.served.revision, lifespan=lifespan,
                  description=f"Serving {server.served.name} (revision {server.served.revision}).")
    app.state.server = server
    limiter = RateLimiter(server.config.rate_limit) if server.config.rate_limit else None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        start = time.perf_counter()
        response = _refusal(request, server, limiter)
        if response is None:
            response = await call_next(request)
        server.metrics.observe(_route_name(request), response.status_code, time.perf_counter() - start)
        return response

    @app.exception_handler(DataError)
    async def bad_input(request: Request, err: DataError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(HfAdaptError)
    async def refused(request: Request, err: HfAdaptError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=400)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> dict[str, Any]:
        served = server.served
        return {"ready": True, "model": served.name, "revision": served.revision, "kind": served.kind}

    @app.get("/metrics")
    async def metrics() -> Response:
        data, content_type = server.metrics.render()
        return Response(data, media_type=content_type)

    @app.post("/admin/rollback")
    async def rollback() -> dict[str, Any]:
        left = server.rollout.rollback()
        return {"model": server.served.name, "revision": server.served.revision, "rolled_back": left.revision}

    @app.get("/admin/versions")
    async def versions() -> dict[str, Any]:
        previous = server.rollout.previous
        return {"serving": server.served.revision, "previous": previous.revision if previous else None,
                "refused": server.rollout.refused}

    if server.served.kind == "classifier":
        from hf_adapt.serve.classifier import router
    else:
        from hf_adapt.serve.completions import router
    from hf_adapt.serve.feedback import router as feedback_router

    app.include_router(router)
    app.include_router(feedback_router)
    if server.config.ui:
        from hf_adapt.serve.ui import mount

        mount(app, server)
    return app


def _refusal(request: Request, server: Server, limiter: RateLimiter | None) -> Response | None:
    """The answer to a request refused before any route runs (size, key, rate), or None to let it through."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > server.config.max_body_bytes):
        return PlainTextResponse(f"the body is {length} bytes; the server takes at most "
                                 f"{server.config.max_body_bytes} (max_body_bytes)", status_code=413)
    if length is None and request.method in ("POST", "PUT", "PATCH"):
        return PlainTextResponse("send a Content-Length (chunked bodies are not taken)", status_code=411)
    if request.url.path in OPEN_ROUTES:
        return None
    if request.url.path.startswith("/admin/") and not server.api_key:
        return JSONResponse({"detail": "admin routes need an API key: start the server with HF_ADAPT_API_KEY set"},
                            status_code=403)
    if server.api_key and not _key_matches(request, server.api_key):
        return JSONResponse({"detail": "missing or wrong API key: send 'Authorization: Bearer <HF_ADAPT_API_KEY>'"},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})
    if limiter is not None:
        wait = limiter.wait_needed(request.client.host if request.client else "unknown")
        if wait:
            return JSONResponse({"detail": f"rate limit of {server.config.rate_limit:g} requests/s reached; retry in "
                                           f"{wait:.1f} s"}, status_code=429, headers={"Retry-After": str(int(wait) + 1)})
    return None


def _key_matches(request: Request, key: str) -> bool:
    given = request.headers.get("authorization", "")
    given = given[7:] if given.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    return hmac.compare_digest(given.encode(), key.encode())

