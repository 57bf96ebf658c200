"""When a source may be fetched again: what the server asked for, or a backoff after failures.

Pure: the caller passes the response headers, the feed's ``<ttl>``, the time and the settings.
A server's wish is the longest of Cache-Control ``max-age`` (``s-maxage``), ``Expires`` (against
the response's ``Date``, else now), ``Retry-After`` and the RSS ``<ttl>`` (minutes), capped by
``max_delay``. After ``n`` failures in a row the wait is ``base * 2**(n-1)``, capped, or the
server's ``Retry-After`` when that is longer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

_MAX_AGE = re.compile(r"(?:^|,)\s*(s-maxage|max-age)\s*=\s*\"?(\d+)\"?", re.I)


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        dt = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return dt if dt.tzinfo else None


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    when = _http_date(value)
    return max(0.0, (when - now).total_seconds()) if when else None


def server_delay(
    headers: Mapping[str, str], ttl_minutes: int | None, now: datetime
) -> tuple[float, str] | None:
    """The longest wait the response asks for, with its reason, or None."""
    asks: list[tuple[float, str]] = []
    cc = headers.get("cache-control", "")
    if not re.search(r"\bno-(cache|store)\b", cc, re.I):
        ages = [int(m.group(2)) for m in _MAX_AGE.finditer(cc)]
        if ages:
            age = float(headers.get("age", "0") or 0) if headers.get("age", "").isdigit() else 0.0
            asks.append((max(ages) - age, "cache-control max-age"))
        elif (expires := _http_date(headers.get("expires"))) is not None:
            base = _http_date(headers.get("date")) or now
            asks.append(((expires - base).total_seconds(), "expires"))
    ra = retry_after_seconds(headers.get("retry-after"), now)
    if ra is not None:
        asks.append((ra, "retry-after"))
    if ttl_minutes:
        asks.append((ttl_minutes * 60.0, "feed ttl"))
    asks = [(s, r) for s, r in asks if s > 0]
    return max(asks) if asks else None


def next_fetch_after_success(
    headers: Mapping[str, str], ttl_minutes: int | None, now: datetime, max_delay: float
) -> tuple[datetime | None, str | None]:
    ask = server_delay(headers, ttl_minutes, now)
    if ask is None:
        return None, None
    seconds, reason = ask
    return now + timedelta(seconds=min(seconds, max_delay)), reason


def next_fetch_after_failure(
    failures: int,
    retry_after: float | None,
    now: datetime,
    base: float,
    cap: float,
) -> tuple[datetime, str]:
    """Exponential backoff after ``failures`` failures in a row (1 = the first)."""
    backoff = min(cap, base * 2 ** max(0, failures - 1))
    if retry_after is not None and retry_after > backoff:
        return now + timedelta(seconds=min(retry_after, cap)), "retry-after"
    return now + timedelta(seconds=backoff), f"backoff after {failures} failure(s)"
