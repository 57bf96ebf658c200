"""Watch inbox folders (``files`` sources with ``watch = true``) and emit one Prefect event per
new file, ``newsflow.file.dropped``, which a deployment trigger turns into an ingest of just
that file.

A file counts once its size has not changed for ``settle`` seconds (a copy in progress is not
picked up half-written), and each (path, size, mtime) is announced once. Triggers may still
fire twice; loads are idempotent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from config.settings import Source
from tasks.files import SUPPORTED

FILE_DROPPED = "newsflow.file.dropped"
LOGGER = logging.getLogger(__name__)

Emit = Callable[..., Any]


class InboxWatcher(FileSystemEventHandler):
    """Emits ``newsflow.file.dropped`` for each new, settled file in the watched folders."""

    def __init__(self, sources: Iterable[Source], emit: Emit, settle: float = 0.5) -> None:
        self.sources = {s.path.resolve(): s for s in sources if s.path is not None}
        self.emit = emit
        self.settle = settle
        self._pending: dict[Path, tuple[int, float]] = {}
        self._announced: set[tuple[Path, int, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer = Observer()
        self._thread = threading.Thread(target=self._settle_loop, daemon=True, name="inbox")

    def start(self) -> None:
        for folder in self.sources:
            folder.mkdir(parents=True, exist_ok=True)
            self._observer.schedule(self, str(folder), recursive=True)
        self._observer.start()
        self._thread.start()
        LOGGER.info("watching %s", ", ".join(str(f) for f in self.sources))

    def stop(self) -> None:
        self._stop.set()
        self._observer.stop()
        self._observer.join(timeout=5)
        self._thread.join(timeout=5)

    # watchdog callbacks (observer thread)
    def on_created(self, event: FileSystemEvent) -> None:
        self._note(event.src_path)

    def on_modified(self, event: FileSystemEvent) -> None:
        self._note(event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._note(event.dest_path)

    def on_closed(self, event: FileSystemEvent) -> None:
        self._note(event.src_path)

    def _note(self, raw: str | bytes) -> None:
        path = Path(raw.decode() if isinstance(raw, bytes) else raw)
        if path.suffix.lower() not in SUPPORTED or path.name.startswith("."):
            return
        with self._lock:
            self._pending[path] = (-1, time.monotonic())

    def _source_of(self, path: Path) -> Source | None:
        real = path.resolve()
        for folder, source in self.sources.items():
            if real.is_relative_to(folder) and real.match(source.glob):
                return source
            if real.is_relative_to(folder) and source.glob in ("**/*", "*", "**"):
                return source
        return None

    def _settle_loop(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            with self._lock:
                items = list(self._pending.items())
            for path, (last_size, since) in items:
                try:
                    st = path.stat()
                except OSError:
                    with self._lock:
                        self._pending.pop(path, None)
                    continue
                if st.st_size != last_size:
                    with self._lock:
                        self._pending[path] = (st.st_size, now)
                    continue
                if now - since < self.settle:
                    continue
                with self._lock:
                    self._pending.pop(path, None)
                key = (path, st.st_size, st.st_mtime_ns)
                source = self._source_of(path)
                if source is None or key in self._announced:
                    continue
                self._announced.add(key)
                self._announce(source, path, st.st_size)

    def _announce(self, source: Source, path: Path, size: int) -> None:
        try:
            self.emit(
                event=FILE_DROPPED,
                resource={
                    "prefect.resource.id": f"newsflow.file.{path.resolve()}",
                    "prefect.resource.name": path.name,
                },
                related=[
                    {
                        "prefect.resource.id": f"newsflow.source.{source.name}",
                        "prefect.resource.role": "source",
                    }
                ],
                payload={"source": source.name, "path": str(path.resolve()), "bytes": size},
            )
            LOGGER.info("file dropped source=%s path=%s", source.name, path)
        except Exception:  # one failed emit must not stop the watcher
            LOGGER.exception("could not emit the event for %s", path)
