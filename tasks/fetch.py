"""HTTP and file retrieval: one client of ours for feeds and pages (httpx, never feedparser's).

:class:`Fetcher` owns one ``httpx.AsyncClient`` (connection reuse, HTTP/2 where offered) on a
private event-loop thread, so that plain threads (Prefect's task runner) can share it and the
global and per-host concurrency bounds hold across every source of a run.

Politeness per host: at most ``per_host`` requests in flight to one host, and a host that
answers 429 or 503 gets no new request until the pause it asked for (``Retry-After``, else a
backoff doubling with each such answer in a row) is over; pages it refused are asked again
after it, up to ``retries`` times. A pause longer than ``max_retry_after`` fails the host's
remaining requests of the run at once, recorded, rather than holding the run.

Every response is bounded: a connect/read timeout, a total deadline (a server trickling bytes
is cut off), a redirect limit (redirects are followed here, hop by hop) and a size cap counted on
the *decoded* body while it streams, so a gzip bomb stops at the cap. Conditional GET: the
caller passes the stored ETag/Last-Modified and gets ``not_modified`` on 304.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urljoin, urlsplit

import certifi
import httpx

from config.settings import FetchSettings
from tasks.core.errors import FetchError, TooLargeError
from tasks.core.models import HttpResult
from tasks.core.politeness import retry_after_seconds
from tasks.guard import AddressPolicy, BlockedAddressError, GuardedBackend, ResolveError

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

_REDIRECTS = {301, 302, 303, 307, 308}
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_SLOW_DOWN = {429, 503}
"""Answers that ask the client to slow down: the host is paused (see :class:`Fetcher`)."""


def _cause(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of type ``kind`` in ``exc``'s chain of causes, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def read_file_url(url: str, source: str, max_bytes: int) -> HttpResult:
    """Read a ``file://`` URL with the same size cap as HTTP."""
    path = Path(unquote(urlsplit(url).path))
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise TooLargeError(source, f"{path}: {size} bytes is over the {max_bytes}-byte cap")
        body = path.read_bytes()
    except FileNotFoundError as exc:
        raise FetchError(source, f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise FetchError(source, f"{path}: is a folder, not a file") from exc
    except PermissionError as exc:
        raise FetchError(source, f"{path}: permission denied") from exc
    return HttpResult(url=url, status=200, body=body, headers={})


class Fetcher:
    """Bounded, polite HTTP GETs shared by every task of a run. Close it when done."""

    def __init__(self, settings: FetchSettings, trusted_hosts: Iterable[str] = ()) -> None:
        self.settings = settings
        self.policy = AddressPolicy.build(
            settings.block_private, [*settings.allow_hosts, *trusted_hosts], settings.allow_networks
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="fetch")
        self._thread.start()
        self._client: httpx.AsyncClient = self._run(self._make_client())
        self._global = asyncio.Semaphore(settings.concurrency)
        self._hosts: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(settings.per_host)
        )
        self._paused_until: dict[str, float] = {}
        """Host -> the event-loop time before which it gets no new request."""
        self._strikes: dict[str, int] = {}
        """Host -> its slow-down answers in a row (429 or 503), for the backoff."""

    async def _make_client(self) -> httpx.AsyncClient:
        s = self.settings
        limits = httpx.Limits(
            max_connections=s.concurrency, max_keepalive_connections=s.concurrency
        )
        verify: ssl.SSLContext | bool = True
        if s.ca_file is not None:
            verify = ssl.create_default_context(cafile=certifi.where())
            verify.load_verify_locations(cafile=str(s.ca_file))
        transport = httpx.AsyncHTTPTransport(http2=True, limits=limits, verify=verify)
        # The address guard sits where connections are made: every hop, the checked address.
        pool = transport._pool
        pool._network_backend = GuardedBackend(self.policy, pool._network_backend)
        return httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            timeout=httpx.Timeout(s.timeout),
            headers={"User-Agent": s.user_agent, "Accept-Encoding": "gzip, deflate"},
            trust_env=False,
        )

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public, blocking API -------------------------------------------------------------
    def get(
        self,
        url: str,
        *,
        source: str = "",
        etag: str | None = None,
        last_modified: str | None = None,
        accept: str | None = None,
    ) -> HttpResult:
        """One GET; raises :class:`FetchError` (``transient`` for timeouts, 429 and 5xx)."""
        if urlsplit(url).scheme == "file":
            return read_file_url(url, source, self.settings.max_bytes)
        return self._run(self._get(url, source, etag, last_modified, accept))

    def get_many(
        self,
        urls: Iterable[str],
        *,
        source: str = "",
        on_result: Callable[[int, HttpResult | FetchError], None] | None = None,
    ) -> list[HttpResult | FetchError]:
        """GET many pages concurrently (bounded); each result is a response or its error.

        ``on_result(i, result)`` is called as each one arrives (on the fetcher's thread), so a
        page can go to extraction while the others are still on their way.
        """

        async def one(i: int, u: str) -> HttpResult | FetchError:
            res: HttpResult | FetchError
            for attempt in range(self.settings.retries + 1):
                try:
                    res = await self._get(u, source, None, None, None)
                    break
                except FetchError as exc:
                    res = exc
                    # A host that asked to slow down is paused now: ask again after the
                    # pause, unless it is longer than the run waits.
                    if (
                        exc.status not in _SLOW_DOWN
                        or attempt == self.settings.retries
                        or (exc.retry_after or 0.0) > self.settings.max_retry_after
                    ):
                        break
            if on_result is not None:
                on_result(i, res)
            return res

        async def all_of(us: list[str]) -> list[HttpResult | FetchError]:
            return list(await asyncio.gather(*(one(i, u) for i, u in enumerate(us))))

        return self._run(all_of(list(urls)))

    # -- internals ------------------------------------------------------------------------
    async def _get(
        self,
        url: str,
        source: str,
        etag: str | None,
        last_modified: str | None,
        accept: str | None,
    ) -> HttpResult:
        host = urlsplit(url).netloc
        # The host's slot first: a request waiting out its host's pause holds no global one.
        async with self._hosts[host]:
            await self._host_ready(host, url, source)
            async with self._global:
                try:
                    async with asyncio.timeout(self.settings.deadline):
                        result = await self._follow(url, source, etag, last_modified, accept)
                except TimeoutError as exc:
                    raise FetchError(
                        source,
                        f"{url}: no complete response within the "
                        f"{self.settings.deadline:g}s deadline",
                        transient=True,
                    ) from exc
                except FetchError as exc:
                    if exc.status in _SLOW_DOWN:
                        self._slow_down(host, exc.retry_after)
                    raise
        self._strikes.pop(host, None)
        return result

    async def _host_ready(self, host: str, url: str, source: str) -> None:
        """Wait out ``host``'s pause; one longer than ``max_retry_after`` fails at once."""
        wait = self._paused_until.get(host, 0.0) - self._loop.time()
        if wait <= 0:
            return
        if wait > self.settings.max_retry_after:
            raise FetchError(
                source,
                f"{url}: not requested: {host} asked for a pause of {wait:.0f}s, longer than "
                "fetch.max_retry_after",
                transient=True,
                retry_after=wait,
                reason="host_paused",
            )
        await asyncio.sleep(wait)

    def _slow_down(self, host: str, retry_after: float | None) -> None:
        """Pause ``host`` after a 429 or 503: for its ``Retry-After``, else for a backoff that
        doubles with each such answer in a row (answers to requests sent before the pause
        began count once)."""
        now = self._loop.time()
        until = self._paused_until.get(host, 0.0)
        if until <= now:
            self._strikes[host] = self._strikes.get(host, 0) + 1
        if retry_after is None:
            retry_after = self.settings.retry_backoff * 2 ** (self._strikes[host] - 1)
        self._paused_until[host] = max(until, now + retry_after)

    async def _follow(
        self,
        url: str,
        source: str,
        etag: str | None,
        last_modified: str | None,
        accept: str | None,
    ) -> HttpResult:
        headers: dict[str, str] = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        if accept:
            headers["Accept"] = accept
        current = url
        for _hop in range(self.settings.max_redirects + 1):
            if urlsplit(current).scheme not in ("http", "https"):
                raise FetchError(source, f"{url}: redirected to unsupported URL {current}")
            status, resp_headers, body = await self._request(current, source, headers)
            if status in _REDIRECTS and "location" in resp_headers:
                current = urljoin(current, resp_headers["location"])
                continue
            return self._result(current, status, resp_headers, body, source)
        raise FetchError(source, f"{url}: more than {self.settings.max_redirects} redirects")

    async def _request(
        self, url: str, source: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        cap = self.settings.max_bytes
        try:
            async with self._client.stream("GET", url, headers=headers) as resp:
                h = {k.lower(): v for k, v in resp.headers.items()}
                declared = h.get("content-length", "")
                if declared.isdigit() and int(declared) > cap and "content-encoding" not in h:
                    raise TooLargeError(
                        source, f"{url}: Content-Length {declared} is over the {cap}-byte cap"
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > cap:
                        raise TooLargeError(source, f"{url}: body over the {cap}-byte cap")
                    chunks.append(chunk)
                return resp.status_code, h, b"".join(chunks)
        except BlockedAddressError as exc:
            raise FetchError(source, f"{url}: {exc}", reason="blocked_address") from exc
        except ResolveError as exc:
            raise FetchError(source, f"{url}: {exc}", reason="dns_error") from exc
        except httpx.TimeoutException as exc:
            raise FetchError(
                source, f"{url}: timed out ({type(exc).__name__})", transient=True
            ) from exc
        except httpx.DecodingError as exc:
            raise FetchError(source, f"{url}: cannot decode the body: {exc}") from exc
        except httpx.HTTPError as exc:
            # A certificate that does not verify is the site's or the config's to fix: no retry.
            if (cert := _cause(exc, ssl.SSLCertVerificationError)) is not None:
                raise FetchError(
                    source,
                    f"{url}: TLS certificate not trusted: {cert.verify_message} "
                    "(see fetch.ca_file)",
                    reason="tls_error",
                ) from exc
            raise FetchError(
                source, f"{url}: {type(exc).__name__}: {exc or 'connection failed'}", transient=True
            ) from exc

    @staticmethod
    def _result(
        url: str, status: int, headers: dict[str, str], body: bytes, source: str
    ) -> HttpResult:
        if status == 304:
            return HttpResult(url=url, status=304, body=b"", headers=headers, not_modified=True)
        if 200 <= status < 300:
            return HttpResult(url=url, status=status, body=body, headers=headers)
        transient = status in _TRANSIENT_STATUS
        retry_after = retry_after_seconds(headers.get("retry-after"), datetime.now(UTC))
        raise FetchError(
            source,
            f"{url}: HTTP {status}",
            transient=transient,
            status=status,
            retry_after=retry_after,
        )
