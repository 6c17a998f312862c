"""Fixtures: a tiny checkpoint and one live server the API tests share."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import live_server, peaky_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("serve")
    return peaky_checkpoint(tmp / "ckpt", tmp / "tok")


@pytest.fixture(scope="session")
def served(checkpoint):
    with live_server(checkpoint, max_running=16, max_queued=64) as (url, server):
        yield url, server
