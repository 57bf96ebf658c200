"""Configuration: one TOML file, validated once at start.

The file holds the warehouse path, fetch/extract/dedup settings (all with defaults) and the
list of sources. Unknown keys are errors, and every error names the file, the key and the
problem, e.g. ``config/newsflow.toml: sources[1].kind: Input should be 'feed' or 'files'``.

Relative paths are resolved against the current working directory, the project root when the
README's commands are used. ``NEWSFLOW_CONFIG`` names the default file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONFIG = Path("config/newsflow.toml")
DEFAULT_USER_AGENT = "newsflow/0.1 (news ingestion; +https://github.com/newsflow/newsflow)"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveFloat = Annotated[float, Field(gt=0)]


class WarehouseSettings(_Strict):
    path: Path = Path("warehouse/news.duckdb")
    memory_limit: str | None = None
    """DuckDB's memory limit (None: DuckDB's own, 80 % of RAM). Beyond it, sorts and joins
    spill to ``<path>.tmp``, but a statement that cannot spill fails: at 512MB, inserting 1M
    generated articles in one statement did."""

    @field_validator("memory_limit")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\s*\d+(\.\d+)?\s*([KMGT]i?B)\s*", v, re.I):
            raise ValueError(f"{v!r} is not a size such as '512MB' or '2GB'")
        return v.strip() if v is not None else None


class FetchSettings(_Strict):
    """HTTP behaviour. Times are seconds, sizes bytes."""

    timeout: PositiveFloat = 20.0
    """Connect/read timeout of one request."""
    deadline: PositiveFloat = 60.0
    """Total time allowed for one response, headers to last byte (stops trickling servers)."""
    max_bytes: int = Field(default=10_000_000, gt=0)
    """Size cap of one response body after decompression; larger bodies are refused."""
    max_redirects: int = Field(default=5, ge=0, le=30)
    user_agent: str = DEFAULT_USER_AGENT
    concurrency: int = Field(default=16, ge=1, le=256)
    """Requests in flight at once, over all hosts."""
    per_host: int = Field(default=4, ge=1, le=64)
    """Requests in flight at once to one host."""
    fetch_pages: bool = True
    """Fetch each new entry's article page (a source may override)."""
    retries: int = Field(default=2, ge=0, le=10)
    """Retries of a feed fetch after a transient error (timeout, 429, 5xx), and of a page
    after its host answered 429 or 503 (once the host's pause is over)."""
    retry_backoff: PositiveFloat = 2.0
    """First retry delay; doubles each retry, unless the server sends Retry-After. Also the
    first pause of a host that answers 429 or 503 with no Retry-After."""
    max_retry_after: PositiveFloat = 120.0
    """Longest Retry-After honoured inside one run; longer ones fail the fetch, and the rest of
    that host's requests in the run."""
    failure_backoff: PositiveFloat = 300.0
    """After a failed fetch, wait this long before the next one; doubles per failure in a row."""
    failure_backoff_max: PositiveFloat = 86400.0
    """The longest wait after failures."""
    max_server_delay: PositiveFloat = 86400.0
    """The longest wait a server can ask for (Cache-Control max-age, Expires, ttl)."""
    block_private: bool = True
    """Refuse links to loopback, private, link-local and other non-public addresses."""
    allow_hosts: list[str] = []
    """Host names exempt from the address guard (hosts of configured feed URLs always are)."""
    allow_networks: list[str] = []
    """Networks exempt from the address guard, e.g. ``["10.1.2.0/24"]``."""
    ca_file: Path | None = None
    """A PEM file of certificates to trust for HTTPS besides the usual ones (a private CA)."""

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, v: Path | None) -> Path | None:
        if v is not None:
            try:
                ssl.create_default_context(cafile=str(v))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"{v}: not a readable PEM file of certificates: {exc}") from None
        return v

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for n in v:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError as exc:
                raise ValueError(f"{n!r} is not a network: {exc}") from None
        return v


class ExtractSettings(_Strict):
    workers: int = Field(default=0, ge=0, le=64)
    """Extraction processes; 0 means one per CPU core."""
    batch_size: int = Field(default=200, ge=1, le=10_000)
    """Entries fetched, extracted and loaded together (bounds memory)."""
    min_chars: int = Field(default=50, ge=0)
    """Extracted text shorter than this counts as no text (the feed's content is kept)."""
    favor_precision: bool = False
    include_comments: bool = False
    include_tables: bool = True


class DedupSettings(_Strict):
    near_duplicates: bool = True
    """Link wire copies and lightly edited reprints (MinHash-LSH) to their canonical copy."""
    stories: bool = True
    """Cluster articles about the same event into stories."""
    window_hours: PositiveFloat = 24.0
    """Articles further apart in time (published, else fetched) are never linked directly: a
    next-day follow-up is a story of its own, and a story cannot swallow months of a topic."""


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(value: float | int | str) -> float:
    """Seconds from a number or a string such as ``"90"``, ``"15m"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a duration (e.g. 900, '15m', '2h', '1d')")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


class Schedule(_Strict):
    """When a source (or a group of sources) runs unattended under ``newsflow serve``."""

    interval: float | str | None = None
    """Every so long: seconds or ``"15m"``, ``"2h"``, ``"1d"``."""
    cron: str | None = None
    """A cron expression, e.g. ``"0 */2 * * *"``."""
    timezone: str = "UTC"
    """Time zone of the cron expression (an IANA name)."""
    group: str | None = None
    """Sources with the same group share one deployment, ``ingest-<group>``."""

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if (self.interval is None) == (self.cron is None):
            raise ValueError("give exactly one of 'interval' and 'cron'")
        if self.interval is not None and parse_duration(self.interval) <= 0:
            raise ValueError("interval must be positive")
        if self.cron is not None:
            from prefect.client.schemas.schedules import CronSchedule

            try:
                CronSchedule(cron=self.cron, timezone="UTC")
            except ValueError:
                raise ValueError(f"cron {self.cron!r} is not a valid cron expression") from None
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(self.timezone)
        except Exception:
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
        if self.group is not None and not _NAME_RE.match(self.group):
            raise ValueError("group must be lowercase letters, digits, '-' or '_'")
        return self

    @property
    def interval_seconds(self) -> float | None:
        return parse_duration(self.interval) if self.interval is not None else None


class Source(_Strict):
    name: str
    kind: Literal["feed", "files"]
    url: str | None = None
    """Feed URL (http, https or file) for ``kind = "feed"``."""
    path: Path | None = None
    """Folder for ``kind = "files"``."""
    glob: str = "**/*"
    fetch_pages: bool | None = None
    """Override of ``fetch.fetch_pages`` for this source."""
    enabled: bool = True
    priority: int = 0
    """Higher wins when choosing the canonical article of a duplicate group."""
    near_duplicates: bool = True
    """False: this source's articles are never merged as near-duplicates."""
    stories: bool = True
    """False: this source's articles are never merged into multi-article stories."""
    schedule: Schedule | None = None
    """Run unattended on this schedule under ``newsflow serve``."""
    watch: bool = False
    """A ``files`` source: under ``newsflow serve``, files dropped into the folder are ingested
    within seconds (an event per file triggers the ingest of that file)."""

    @property
    def location(self) -> str:
        """The feed URL or the folder, as configured."""
        return self.url if self.url is not None else str(self.path)

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("must be lowercase letters, digits, '-' or '_' (at most 63)")
        return v

    @model_validator(mode="after")
    def _kind_fields(self) -> Source:
        if self.kind == "feed":
            if not self.url:
                raise ValueError("a feed source needs 'url'")
            if urlsplit(self.url).scheme not in ("http", "https", "file"):
                raise ValueError(f"url {self.url!r}: scheme must be http, https or file")
            if self.path is not None:
                raise ValueError("a feed source takes 'url', not 'path'")
        else:
            if self.path is None:
                raise ValueError("a files source needs 'path' (a folder)")
            if self.url is not None:
                raise ValueError("a files source takes 'path', not 'url'")
        if self.watch and self.kind != "files":
            raise ValueError("only a files source can be watched")
        return self


class Settings(_Strict):
    warehouse: WarehouseSettings = WarehouseSettings()
    fetch: FetchSettings = FetchSettings()
    extract: ExtractSettings = ExtractSettings()
    dedup: DedupSettings = DedupSettings()
    sources: list[Source] = []

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for s in self.sources:
            if s.name in seen:
                raise ValueError(f"source name {s.name!r} is used twice")
            seen.add(s.name)
        return self

    def source(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)

    def select(self, names: list[str] | None) -> list[Source]:
        """The enabled sources, or the named ones (named ones run even when disabled)."""
        if not names:
            return [s for s in self.sources if s.enabled]
        known = {s.name for s in self.sources}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise KeyError(", ".join(unknown))
        return [s for s in self.sources if s.name in names]


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def parse_config(text: str, path: Path | str = "<string>") -> Settings:
    """Validate TOML text; raise :class:`ConfigError` naming file, key and problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from exc
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            msg = msg.removeprefix("Value error, ")
            problems.append(f"{_loc(tuple(err['loc']))}: {msg}")
        raise ConfigError(path, problems) from None


def default_config_path() -> Path:
    return Path(os.environ.get("NEWSFLOW_CONFIG", str(DEFAULT_CONFIG)))


def load_config(path: Path | str | None = None) -> Settings:
    """Read and validate the config file (``NEWSFLOW_CONFIG`` or ``config/newsflow.toml``)."""
    p = Path(path) if path is not None else default_config_path()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(p, [f"cannot read: {exc.strerror or exc}"]) from exc
    return parse_config(text, p)
