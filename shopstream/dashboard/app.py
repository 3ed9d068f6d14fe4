"""`shopstream dashboard`: the live operations page, served by Starlette on uvicorn.

- `GET /`: the page (static HTML, JavaScript and the vendored uPlot; no CDN).
- `GET /api/snapshot`: every section as JSON.
- `GET /api/events`: Server-Sent Events; a `snapshot` event first, then an `update`
  event with the sections that changed. Browsers reconnect by themselves (`retry`),
  so the page outlives a server restart; a Redis outage shows on the page as
  `status.redis = "unreachable"` while the poller keeps trying.
- `POST /api/alerts/ack` `{"dedup_key": ...}`: sets `alerts:ack:{dedup_key}` exactly as
  `shopstream alerts ack` does.

With `SHOPSTREAM_DASHBOARD_TOKEN` set, every route but the static assets needs the
token: `?token=` on the page once (it becomes an HttpOnly, SameSite=Strict cookie) or
`Authorization: Bearer`. Acknowledging also needs a JSON body and, when the browser
sends an Origin, our own origin: another site cannot post one.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from shopstream.dashboard.config import DashboardConfig
from shopstream.dashboard.reader import BoardReader
from shopstream.settings import Settings
from state.serde import dumps

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
COOKIE = "shopstream_dashboard"
KEEPALIVE_S = 15.0
QUEUE_LIMIT = 64  # updates a slow page may fall behind before it is dropped (it reconnects)
ACK_TTL_S = 7 * 24 * 3600  # as `shopstream alerts ack`: the alerts flow deletes it on resolve

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


class Board:
    """The one poller behind every page: polls Redis on a thread, keeps each section's
    JSON, and hands the sections that changed to every subscribed page."""

    def __init__(self, settings: Settings, config: DashboardConfig, client=None):
        from state.redis_store import connect

        self.settings = settings
        self.config = config
        self.client = client or connect(settings)
        self.reader = BoardReader(self.client, settings.redis_prefix, config,
                                  replenish_cover_min=float(settings.stock_replenish_cover_min))
        self.sections: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._subscribers: set[asyncio.Queue] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0
        self._status(None)

    # -- polling ------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.poll_once(first=True)
        self._thread = threading.Thread(target=self._run, name="dashboard-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._end_all)

    def _end_all(self) -> None:
        for queue in list(self._subscribers):
            self._subscribers.discard(queue)
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    def wake(self) -> None:
        """Poll now (after an acknowledgement), not at the next tick."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.poll_s)
            self._wake.clear()
            if not self._stop.is_set():
                self.poll_once()

    def poll_once(self, first: bool = False) -> None:
        try:
            # The first poll walks the whole keyspace so the first page is complete.
            sections = self.reader.poll(scan_budget=1_000_000 if first else None)
            error = None
        except Exception as err:  # noqa: BLE001 - Redis down or restarting: say so, try again next tick
            sections, error = {}, err
            log.warning("dashboard cannot read Redis: %s", err)
        self.polls += 1
        changed = {}
        with self._lock:
            for name, value in [*sections.items(), ("status", self._status_value(error))]:
                encoded = dumps(value)
                if self.sections.get(name) != encoded:
                    self.sections[name] = encoded
                    changed[name] = encoded
        if changed and self._loop is not None:
            payload = _join(changed)
            self._loop.call_soon_threadsafe(self._deliver, payload)

    def _status(self, error) -> None:
        self.sections["status"] = dumps(self._status_value(error))

    def _status_value(self, error) -> dict[str, Any]:
        host, port = self.settings.redis_host_port
        return {"redis": "ok" if error is None else "unreachable", "redis_address": f"{host}:{port}",
                "error": None if error is None else type(error).__name__,
                "prefix": self.settings.redis_prefix, "poll_s": self.config.poll_s,
                "ack_needs_token": bool(self.config.token)}

    # -- subscribers (on the event loop) -----------------------------------------------------

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(QUEUE_LIMIT)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers.discard(queue)

    def _deliver(self, payload: bytes) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(payload)
            except asyncio.QueueFull:
                # A page that stopped reading: end its stream; the browser reconnects
                # and gets a fresh snapshot instead of a backlog.
                self._subscribers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)

    def snapshot(self) -> bytes:
        with self._lock:
            return _join(dict(self.sections))

    # -- acknowledging ------------------------------------------------------------------------

    def acknowledge(self, dedup_key: str, note: str, by: str) -> dict[str, Any] | None:
        from state.serde import loads

        raw = self.client.hget(self.settings.redis_key("alerts:active"), dedup_key)
        if raw is None:
            return None
        alert = loads(raw)
        ack = {"first_seen_ts": alert["first_seen_ts"], "ts": int(time.time() * 1000), "by": by}
        if note:
            ack["note"] = note
        self.client.set(self.settings.redis_key(f"alerts:ack:{dedup_key}"), dumps(ack), ex=ACK_TTL_S)
        self.wake()
        return ack


def _join(sections: dict[str, bytes]) -> bytes:
    """A JSON object from already encoded section values (each encoded once for all pages)."""
    return b"{" + b",".join(dumps(name) + b":" + value for name, value in sections.items()) + b"}"


# -- the web app -------------------------------------------------------------------------------


class _SecurityHeaders:
    """Plain ASGI (a BaseHTTPMiddleware would buffer the event stream's first bytes)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(board: Board) -> Starlette:
    config = board.config

    def supplied_token(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.cookies.get(COOKIE, "")

    def authorized(request: Request, token: str | None = None) -> bool:
        if not config.token:
            return True
        given = token if token is not None else supplied_token(request)
        return hmac.compare_digest(given.encode(), config.token.encode())

    def denied() -> Response:
        return PlainTextResponse("a dashboard token is needed: open the page with ?token=...", status_code=401)

    async def page(request: Request) -> Response:
        query_token = request.query_params.get("token")
        if query_token is not None and config.token:
            if not authorized(request, query_token):
                return denied()
            # Into a cookie, out of the address bar (and out of history and referrers).
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, config.token, httponly=True, samesite="strict", path="/")
            return response
        if not authorized(request):
            return denied()
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-store"})

    async def snapshot(request: Request) -> Response:
        if not authorized(request):
            return denied()
        return Response(board.snapshot(), media_type="application/json", headers={"cache-control": "no-store"})

    async def events(request: Request) -> Response:
        if not authorized(request):
            return denied()
        queue = board.subscribe()

        async def stream():
            try:
                yield b"retry: 1000\n\nevent: snapshot\ndata: " + board.snapshot() + b"\n\n"
                while True:
                    try:
                        payload = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        yield b": keepalive\n\n"
                        continue
                    if payload is None:
                        return
                    yield b"event: update\ndata: " + payload + b"\n\n"
            finally:
                board.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def acknowledge(request: Request) -> Response:
        if not authorized(request):
            return denied()
        origin = request.headers.get("origin")
        own_origin = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin is not None and origin != own_origin:
            return JSONResponse({"error": "cross-origin acknowledgements are refused"}, status_code=403)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send JSON"}, status_code=415)
        try:
            body = await request.json()
            dedup_key = body["dedup_key"]
            note = body.get("note", "")
            if not isinstance(dedup_key, str) or not dedup_key or not isinstance(note, str):
                raise ValueError
        except Exception:  # noqa: BLE001 - anything unusable is the client's error
            return JSONResponse({"error": 'expected {"dedup_key": "rule:key"}'}, status_code=400)
        by = "dashboard" + (f"@{request.client.host}" if request.client else "")
        try:
            ack = await run_in_threadpool(board.acknowledge, dedup_key, note[:500], by)
        except Exception as err:  # noqa: BLE001 - Redis down: the page says so, nothing is half-written
            return JSONResponse({"error": f"Redis: {type(err).__name__}"}, status_code=503)
        if ack is None:
            return JSONResponse({"error": "no such active alert"}, status_code=404)
        return JSONResponse({"acknowledged": dedup_key, "ack": ack})

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def startup() -> None:
        await run_in_threadpool(board.start, asyncio.get_running_loop())

    async def shutdown() -> None:
        await run_in_threadpool(board.stop)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        await startup()
        try:
            yield
        finally:
            await shutdown()

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/snapshot", snapshot),
            Route("/api/events", events),
            Route("/api/alerts/ack", acknowledge, methods=["POST"]),
            Route("/healthz", health),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=[Middleware(_SecurityHeaders)],
        lifespan=lifespan,
    )


def serve(settings: Settings, config: DashboardConfig) -> int:
    import uvicorn

    board = Board(settings, config)
    app = create_app(board)
    url = f"http://{config.host}:{config.port}/"
    print(f"shopstream dashboard on {url} (Redis keys under {settings.redis_prefix!r}); Ctrl-C stops", flush=True)
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level="warning", access_log=False,
        timeout_graceful_shutdown=2, lifespan="on",
    ))
    server.run()
    return 0
