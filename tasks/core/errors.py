"""Errors of the ingestion pipeline.

The tree::

    IngestError
    └── SourceError(source)            a source failed; recorded, the run goes on
        ├── FetchError(transient)      HTTP/file retrieval failed
        │   └── TooLargeError          body over the size cap (never transient)
        └── FeedParseError             the body is not a feed we can read

Expected per-item outcomes (an article page with no text, a page that failed) are values,
not exceptions: they are recorded with a reason and the entry keeps its feed content.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base class of newsflow's own errors."""


class SourceError(IngestError):
    """A source could not be read; ``str()`` names the source and the cause."""

    reason = "source_error"

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        self.message = message
        super().__init__(f"{source}: {message}")


class FetchError(SourceError):
    """Retrieval failed. ``transient`` errors (timeouts, 429, 5xx) are worth retrying."""

    reason = "fetch_error"

    def __init__(
        self,
        source: str,
        message: str,
        *,
        transient: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(source, message)
        if reason:
            self.reason = reason
        self.transient = transient
        self.status = status
        self.retry_after = retry_after


class TooLargeError(FetchError):
    reason = "too_large"


class FeedParseError(SourceError):
    reason = "parse_error"
