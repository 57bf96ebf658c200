"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.httpserver import TestServer


@pytest.fixture
def http_server() -> Iterator[TestServer]:
    """A real HTTP server on 127.0.0.1 (random port), closed after the test."""
    server = TestServer()
    try:
        yield server
    finally:
        server.close()
