"""Shared fixtures: a real kanband per test, torn down completely."""

from __future__ import annotations

import pytest

from tests.harness import Daemon, become_subreaper, restore_default_signals

become_subreaper()
restore_default_signals()  # `make test &`: children must not inherit an ignored SIGINT


@pytest.fixture
def make_daemon():
    """Factory: ``make_daemon(config)`` returns a started Daemon; all are cleaned up after the test."""
    made: list[Daemon] = []

    def factory(config=None, start=True, **kw) -> Daemon:
        d = Daemon(config, **kw)
        made.append(d)
        if start:
            d.start()
        return d

    yield factory
    for d in made:
        d.cleanup()
    for d in made:
        assert not d.ours(), f"processes left running after cleanup: {d.ours()}"


@pytest.fixture
def daemon(make_daemon):
    """A started daemon with the default (fast) test config."""
    return make_daemon()
