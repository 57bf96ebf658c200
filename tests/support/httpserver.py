"""A small real HTTP server for tests.

Runs ``http.server.ThreadingHTTPServer`` on 127.0.0.1 (or another loopback address: the whole
of 127.0.0.0/8 is loopback, so several servers make several hosts), ephemeral port, in a
daemon thread.
Routes are registered per path (query string ignored) and can simulate status codes, gzip,
ETag / Last-Modified conditional requests, redirects, slow responses and trickled bodies.
No third-party mocking libraries are involved: clients talk real HTTP over a socket.
"""

from __future__ import annotations

import gzip as gzip_mod
import mimetypes
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["CaseInsensitiveDict", "RecordedRequest", "Route", "TestServer"]

_REDIRECT_STATUSES = {301, 302, 303, 307, 308}

_SUFFIX_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".xml": "application/xml; charset=utf-8",
    ".rss": "application/rss+xml; charset=utf-8",
    ".atom": "application/atom+xml; charset=utf-8",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
}


class CaseInsensitiveDict(MutableMapping[str, str]):
    """Header mapping with case-insensitive keys (original casing kept for iteration)."""

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self._store: dict[str, tuple[str, str]] = {}
        if data:
            for k, v in data.items():
                self[k] = v

    def __setitem__(self, key: str, value: str) -> None:
        self._store[key.lower()] = (key, value)

    def __getitem__(self, key: str) -> str:
        return self._store[key.lower()][1]

    def __delitem__(self, key: str) -> None:
        del self._store[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return (orig for orig, _ in self._store.values())

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"CaseInsensitiveDict({dict(self.items())!r})"


@dataclass
class Route:
    """How to answer requests for one path."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to sleep before sending anything
    gzip: bool = False  # gzip the body and set Content-Encoding: gzip
    etag: str | None = None  # send ETag; 304 when If-None-Match matches
    last_modified: str | None = None  # send Last-Modified; 304 when If-Modified-Since equals it
    redirect_to: str | None = None  # Location header; status should be 301/302/303/307/308
    trickle: float = 0.0  # send the body one byte per `trickle` seconds
    content_type: str = "text/html; charset=utf-8"

    def __post_init__(self) -> None:
        if isinstance(self.body, str):  # convenience: accept text
            self.body = self.body.encode("utf-8")
        if self.redirect_to is not None and self.status not in _REDIRECT_STATUSES:
            self.status = 302


@dataclass
class RecordedRequest:
    method: str
    path: str  # full request target including query string, e.g. "/feed.xml?x=1"
    headers: CaseInsensitiveDict
    time: float  # time.monotonic() when the request line was received
    client: tuple[str, int] = ("", 0)  # the connection's peer address: one per connection
    ended: float | None = None  # time.monotonic() when the answer was sent (None: not yet)

    @property
    def route_path(self) -> str:
        """Path without query string (the key routes are registered under)."""
        return urlsplit(self.path).path


class _Sequence:
    def __init__(self, routes: list[Route]) -> None:
        if not routes:
            raise ValueError("set_sequence needs at least one route")
        self.routes = list(routes)
        self.index = 0

    def next(self) -> Route:
        route = self.routes[min(self.index, len(self.routes) - 1)]
        self.index += 1
        return route


@dataclass
class _DirMount:
    prefix: str
    directory: Path
    content_type_by_suffix: bool
    rewrite: Callable[[bytes], bytes] | None


def _quiet_handle_error(request: Any, client_address: Any) -> None:
    """Clients that hang up mid-response (size caps, deadlines) are expected here."""
    import sys

    exc = sys.exc_info()[1]
    if isinstance(exc, ConnectionError | TimeoutError):
        return
    import traceback

    traceback.print_exc()


def _norm_path(path: str) -> str:
    path = urlsplit(path).path if "://" in path else path.split("?", 1)[0]
    return path if path.startswith("/") else "/" + path


class TestServer:
    """Real HTTP server on 127.0.0.1 for tests. Thread-safe; use as a context manager."""

    __test__ = False  # not a pytest test class

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._lock = threading.RLock()
        self._routes: dict[str, Route | _Sequence] = {}
        self._mounts: list[_DirMount] = []
        self.requests: list[RecordedRequest] = []
        self._conns: set[socket.socket] = set()
        self._httpd = ThreadingHTTPServer((host, 0), self._make_handler())
        self._httpd.handle_error = _quiet_handle_error  # type: ignore[method-assign]
        self._httpd.daemon_threads = True
        bound, port = self._httpd.server_address[:2]
        self.host = str(bound)
        self.port = int(port)
        self.base_url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"TestServer:{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._closed = False

    # ----------------------------------------------------------------- public API
    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def set(self, path: str, route: Route | None = None, **kwargs: Any) -> str:
        """Register (or replace) the route for ``path``; returns the full URL.

        Either pass a Route or Route fields as keyword arguments (``body`` may be str).
        """
        if route is None:
            route = Route(**kwargs)
        elif kwargs:
            raise TypeError("pass either a Route or keyword arguments, not both")
        key = _norm_path(path)
        with self._lock:
            self._routes[key] = route
        return self.url(path)

    def set_sequence(self, path: str, routes: list[Route]) -> str:
        """Successive requests get successive routes; the last one repeats."""
        key = _norm_path(path)
        with self._lock:
            self._routes[key] = _Sequence(routes)
        return self.url(path)

    def serve_dir(
        self,
        prefix: str,
        directory: Path,
        content_type_by_suffix: bool = True,
        rewrite: Callable[[bytes], bytes] | None = None,
    ) -> str:
        """Serve files of ``directory`` under URL ``prefix`` (e.g. "/static").

        ``rewrite`` is applied to file bytes before sending (e.g. to substitute the
        server's base URL into feed links). Explicit ``set`` routes take precedence.
        Returns the URL of the prefix.
        """
        prefix = "/" + prefix.strip("/")
        mount = _DirMount(prefix, Path(directory).resolve(), content_type_by_suffix, rewrite)
        with self._lock:
            self._mounts = [m for m in self._mounts if m.prefix != prefix]
            self._mounts.append(mount)
            self._mounts.sort(key=lambda m: len(m.prefix), reverse=True)
        return self.url(prefix.rstrip("/") + "/")

    def hits(self, path: str) -> int:
        """Number of recorded requests for ``path`` (query string ignored)."""
        key = _norm_path(path)
        with self._lock:
            return sum(1 for r in self.requests if r.route_path == key)

    def requests_for(self, path: str) -> list[RecordedRequest]:
        key = _norm_path(path)
        with self._lock:
            return [r for r in self.requests if r.route_path == key]

    def reset(self) -> None:
        """Forget routes, mounts and recorded requests."""
        with self._lock:
            self._routes.clear()
            self._mounts.clear()
            self.requests.clear()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        # drop keep-alive connections too, so pooled clients see the server as gone
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self) -> TestServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- internals
    def _resolve(self, raw_path: str) -> Route | None:
        key = _norm_path(raw_path)
        with self._lock:
            entry = self._routes.get(key)
            if isinstance(entry, _Sequence):
                return entry.next()
            if entry is not None:
                return entry
            mounts = list(self._mounts)
        for mount in mounts:
            route = self._from_mount(mount, key)
            if route is not None:
                return route
        return None

    @staticmethod
    def _from_mount(mount: _DirMount, key: str) -> Route | None:
        if key != mount.prefix and not key.startswith(mount.prefix.rstrip("/") + "/"):
            return None
        rel = key[len(mount.prefix) :].lstrip("/")
        target = (mount.directory / unquote(rel)).resolve()
        if not target.is_relative_to(mount.directory) or not target.is_file():
            return None
        data = target.read_bytes()
        if mount.rewrite is not None:
            data = mount.rewrite(data)
        ctype = "application/octet-stream"
        if mount.content_type_by_suffix:
            suffix = target.suffix.lower()
            ctype = _SUFFIX_TYPES.get(suffix) or mimetypes.guess_type(target.name)[0] or ctype
        return Route(body=data, content_type=ctype)

    def _record(self, handler: BaseHTTPRequestHandler, started: float) -> RecordedRequest:
        headers = CaseInsensitiveDict({k: v for k, v in handler.headers.items()})
        peer = handler.client_address
        rec = RecordedRequest(
            handler.command, handler.path, headers, started, (str(peer[0]), int(peer[1]))
        )
        with self._lock:
            self.requests.append(rec)
        return rec

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "newsflow-testserver/1.0"

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server._conns.add(self.connection)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with server._lock:
                        server._conns.discard(self.connection)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

            def _handle(self) -> None:
                started = time.monotonic()
                # drain any request body so keep-alive connections stay in sync
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                rec = server._record(self, started)
                route = server._resolve(self.path)
                try:
                    if route is None:
                        self._send(404, b"not found\n", {"Content-Type": "text/plain"})
                        return
                    self._answer(route)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    rec.ended = time.monotonic()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

            def do_HEAD(self) -> None:
                self._handle()

            def _answer(self, route: Route) -> None:
                if route.delay > 0:
                    time.sleep(route.delay)
                headers: dict[str, str] = {"Content-Type": route.content_type}
                if route.etag is not None:
                    headers["ETag"] = route.etag
                if route.last_modified is not None:
                    headers["Last-Modified"] = route.last_modified
                if route.redirect_to is not None:
                    headers["Location"] = route.redirect_to
                headers.update(route.headers)

                if self._not_modified(route):
                    for k in ("Content-Type", "Content-Encoding"):
                        headers.pop(k, None)
                    self._send(304, b"", headers)
                    return

                body = route.body
                if route.gzip:
                    body = gzip_mod.compress(body)
                    headers["Content-Encoding"] = "gzip"
                self._send(route.status, body, headers, trickle=route.trickle)

            def _not_modified(self, route: Route) -> bool:
                inm = self.headers.get("If-None-Match")
                if route.etag is not None and inm is not None:
                    tags = [t.strip() for t in inm.split(",")]
                    if "*" in tags or route.etag in tags:
                        return True
                    weakless = route.etag.removeprefix("W/")
                    return any(t.removeprefix("W/") == weakless for t in tags)
                ims = self.headers.get("If-Modified-Since")
                return (
                    route.last_modified is not None
                    and ims is not None
                    and ims.strip() == route.last_modified
                )

            def _send(
                self, status: int, body: bytes, headers: dict[str, str], trickle: float = 0.0
            ) -> None:
                self.send_response(status)
                has_len = any(k.lower() == "content-length" for k in headers)
                for k, v in headers.items():
                    self.send_header(k, v)
                no_body = status == 304 or status == 204 or 100 <= status < 200
                if not has_len and not no_body:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "HEAD" or no_body:
                    return
                if trickle > 0:
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(trickle)
                else:
                    self.wfile.write(body)
                self.wfile.flush()

        return Handler
