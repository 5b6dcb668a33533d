"""The web board's gate: token, Host check, CSRF header, and security headers on every answer.

Runs in: the ``kanband: web`` role.

Loopback is not a boundary (any local user, and any web page through DNS
rebinding, can reach a loopback port), so every request must pass, in order:

1. **Host**: the ``Host`` header names the listen address or localhost with
   the bound port (``403`` otherwise), which defeats DNS rebinding.
2. **Token**: ``?token=`` once (answered with a redirect that drops it from the
   URL and sets an ``HttpOnly; SameSite=Strict`` cookie named after the port, so
   boards on other ports keep their own), then the cookie. Without it: ``401``
   and an empty body, for every path, static files included.
3. **CSRF**: every non-GET request carries ``X-Kanban-CSRF``, a value derived
   from the token (HMAC) and handed to the page in a ``<meta>`` tag; a request
   with an ``Origin`` header must come from this origin.

Every answer, refusals included, carries a strict Content-Security-Policy
(no inline script or style, nothing from elsewhere), ``nosniff``,
``no-referrer``, ``DENY`` framing and ``no-store``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlencode

import structlog

log = structlog.get_logger()

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
CSRF_HEADER = "x-kanban-csrf"


def load_token(path: str) -> str:
    """The board's token from ``path``; created (0600, ``secrets.token_urlsafe(32)``) if missing.

    A file readable by others is tightened to 0600 first.

    Raises:
        OSError: The file cannot be created or read.
        ValueError: The file is empty.
    """
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        st = os.stat(path)
        if st.st_mode & 0o077:
            log.warning("web.token_mode_fixed", file=path, mode=oct(st.st_mode & 0o777))
            os.chmod(path, 0o600)
        with open(path) as f:
            token = f.read().strip()
        if not token:
            raise ValueError(f"{path} is empty; delete it and a new token is made") from None
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("web.token_created", file=path)
    return token


def csrf_for(token: str) -> str:
    """The CSRF header value the page must send: derived from the token, useless without it."""
    return hmac.new(token.encode(), b"kanban-csrf", hashlib.sha256).hexdigest()


class Gate:
    """ASGI middleware that lets through only requests that pass the three checks.

    Args:
        app: The inner ASGI app.
        token: The board's token.
        port: The bound port (names the cookie, and goes into the allowed hosts).
        hosts: Allowed ``Host`` header values (``host:port``), lower case.
        any_ip_host: Also allow any IP literal with our port (``web.allow_remote`` on a wildcard address).
    """

    def __init__(self, app: Any, token: str, port: int, hosts: set[str], any_ip_host: bool = False) -> None:
        self.app = app
        self.token = token.encode()
        self.csrf = csrf_for(token).encode()
        self.cookie = f"kanban_{port}"
        self.port = port
        self.hosts = hosts
        self.any_ip_host = any_ip_host

    def host_ok(self, host: str) -> bool:
        host = host.lower()
        if host in self.hosts:
            return True
        if self.any_ip_host:
            import ipaddress
            name, _, port = host.rpartition(":")
            try:
                ipaddress.ip_address(name.strip("[]"))
            except ValueError:
                return False
            return port == str(self.port)
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not self.host_ok(headers.get("host", "")):
            log.warning("web.host_refused", host=headers.get("host"), path=scope["path"])
            await self._plain(send, 403, b"forbidden: wrong Host\n")
            return
        query = scope.get("query_string", b"").decode("latin-1")
        if "token=" in query:
            pairs = parse_qsl(query, keep_blank_values=True)
            given = next((v for k, v in pairs if k == "token"), "")
            if not hmac.compare_digest(given.encode(), self.token):
                await self._plain(send, 401, b"")
                return
            rest = urlencode([(k, v) for k, v in pairs if k != "token"])
            location = scope["path"] + (f"?{rest}" if rest else "")
            await send({"type": "http.response.start", "status": 303, "headers": HEADERS + [
                (b"location", location.encode()), (b"content-length", b"0"),
                (b"set-cookie", f"{self.cookie}={self.token.decode()}; Path=/; HttpOnly; SameSite=Strict".encode())]})
            await send({"type": "http.response.body", "body": b""})
            return
        if not hmac.compare_digest(self._cookie(headers.get("cookie", "")), self.token):
            await self._plain(send, 401, b"")
            return
        if scope["method"] not in ("GET", "HEAD"):
            if not hmac.compare_digest(headers.get(CSRF_HEADER, "").encode(), self.csrf):
                await self._plain(send, 403, b"forbidden: missing or wrong X-Kanban-CSRF header\n")
                return
            origin = headers.get("origin")
            if origin is not None and origin.lower() != f"http://{headers['host'].lower()}":
                await self._plain(send, 403, b"forbidden: cross-origin request\n")
                return

        async def send_secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*HEADERS, *[h for h in message.get("headers", [])
                                                               if h[0].lower() != b"cache-control"]]}
            await send(message)

        await self.app(scope, receive, send_secured)

    def _cookie(self, raw: str) -> bytes:
        for part in raw.split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.cookie:
                return value.encode()
        return b""

    @staticmethod
    async def _plain(send: Any, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": HEADERS + [
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
