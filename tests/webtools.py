"""Helpers for the web board's tests and benchmark: a daemon with the web role on, its URL,
plain HTTP requests to it, and Debian's Chromium driven by Playwright.

Used by tests/integration/test_web*.py and bench/web.py. The browser is the system's
``/usr/bin/chromium`` (``make test`` installs it); Playwright never downloads one.
"""

from __future__ import annotations

import http.client
import os
import re
from pathlib import Path
from typing import Any

from tests.harness import REPO, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Screenshots the browser tests take (the README's come from here: docs/img/).
SHOTS = REPO / ".artifacts" / "screenshots"
WEB_ON = {"web": {"enabled": True}}


def launch(playwright: Any) -> Any:
    """Debian's Chromium, headless, with nothing reaching out to the network."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def web_role(d) -> dict[str, Any]:
    """The web role's row of ``daemon.status`` once it listens."""
    return wait_for(lambda: next((r for r in d.rpc("daemon.status")["roles"] if r["name"] == "web" and r.get("url")),
                                 None), timeout=20, what="the web role to listen")


def board_url(d) -> str:
    """``kanban web``: the URL with the token."""
    web_role(d)
    return d.cli("web").stdout.strip()


def split(url: str) -> tuple[str, str]:
    """``http://HOST:PORT/?token=T`` -> (``HOST:PORT``, ``T``)."""
    m = re.match(r"^http://([^/]+)/\?token=(.+)$", url)
    assert m, url
    return m.group(1), m.group(2)


def request(hostport: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            ) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; returns (status, lower-cased headers, body)."""
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        res = conn.getresponse()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
    finally:
        conn.close()


def session(d) -> tuple[str, dict[str, str]]:
    """Log in like a browser: returns (host:port, headers with the cookie and the CSRF value)."""
    hostport, token = split(board_url(d))
    status, headers, _ = request(hostport, "GET", f"/?token={token}")
    assert status == 303, status
    cookie = headers["set-cookie"].split(";")[0]
    status, _, page = request(hostport, "GET", "/", headers={"Cookie": cookie})
    assert status == 200
    csrf = re.search(rb'name="csrf" content="([0-9a-f]+)"', page).group(1).decode()
    return hostport, {"Cookie": cookie, "X-Kanban-CSRF": csrf}


def shot(page: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def chromium_missing() -> str | None:
    return None if os.access(CHROMIUM, os.X_OK) else f"{CHROMIUM} is missing: run `make browser` (as root) first"
