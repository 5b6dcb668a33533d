"""The ``web`` role: serves the web board over HTTP, as a client of the dispatcher.

Runs in: the ``kanband: web`` process, forked by the supervisor. It is not
essential (``RoleSpec.essential``): if it cannot bind or keeps failing, the
supervisor restarts it with backoff and ``kanban status`` says so, but READY,
the watchdog and dispatching never wait for it.

One asyncio loop runs everything: uvicorn's HTTP protocol (h11) on a socket
this role binds itself (``web.listen``; port 0 picks a free one), the
:class:`~daemon.web.rpc.DispatcherLink` to the daemon's Unix socket, the
heartbeat to the supervisor (``{"t": "hb", "ready", "url", "listen",
"token_file", "dispatcher", "pages"}``: the supervisor copies these into
``daemon.status``), the supervisor channel (config reloads, EOF) and the
signal wakeup fd. It never opens the board. It does not run uvicorn's
``Server.serve``, whose 0.1 s tick would wake an idle daemon ten times a
second: it starts and stops the server itself, without the Date header that
tick maintains.

With ``web.listen`` on port 0 the role first tries the port it had last time
(``<state_dir>/web.port``), so URLs and open pages survive its restarts.
A bind failure is reported in a heartbeat (``error``) and the role exits 1;
the supervisor retries with backoff and shows the error in ``daemon.status``.
A reload that changes ``web.listen``, ``web.allow_remote`` or ``web.token_file``
re-binds in place.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from typing import Any

import structlog

from daemon import config as config_mod
from daemon import roles
from daemon.web.rpc import DispatcherLink

log = structlog.get_logger()

REBIND_KEYS = ("listen", "allow_remote", "token_file")


def token_path(cfg: dict[str, Any], paths: dict[str, str]) -> str:
    """``web.token_file``, or ``<state_dir>/web.token``; relative paths are from the config's directory."""
    path = cfg["web"]["token_file"]
    if not path:
        return os.path.join(paths["state_dir"], "web.token")
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(cfg.get("_dir") or os.getcwd(), path)


def bind(listen: str) -> socket.socket:
    """A listening TCP socket on ``HOST:PORT``.

    Raises:
        OSError: The address cannot be resolved or bound (message names it).
    """
    host, port = config_mod.parse_listen(listen)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(128)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise OSError(f"cannot listen on {listen}: {last.strerror if last else 'no address'}")


def url_host(sock: socket.socket) -> str:
    addr = sock.getsockname()
    return f"[{addr[0]}]:{addr[1]}" if sock.family == socket.AF_INET6 else f"{addr[0]}:{addr[1]}"


class Server:
    """One bound uvicorn server for the app (re-made on a rebind)."""

    def __init__(self, sock: socket.socket, asgi: Any) -> None:
        import uvicorn
        self.sock = sock
        self.config = uvicorn.Config(asgi, lifespan="off", log_config=None, access_log=False, server_header=False,
                                     date_header=False, proxy_headers=False, http="h11", ws="none",
                                     timeout_graceful_shutdown=2, timeout_keep_alive=30)
        self.config.load()
        self.server = uvicorn.Server(self.config)
        self.server.lifespan = self.config.lifespan_class(self.config)

    async def start(self) -> None:
        await self.server.startup(sockets=[self.sock])
        self.server.server_state.default_headers = list(self.config.encoded_headers)

    async def stop(self) -> None:
        self.server.force_exit = True  # open event streams were ended by the hub; do not wait on keep-alives
        await self.server.shutdown(sockets=[self.sock])


class WebRole:
    """State of the web role; :meth:`main` runs it."""

    def __init__(self, ctx: roles.RoleContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self.server: Server | None = None
        self.app: Any = None  # the BoardApp being served
        self.url: str | None = None
        self.listen: str | None = None
        self.token_file = token_path(self.cfg, ctx.paths)
        self.error: str | None = None
        from daemon.web.app import Hub
        self.hub = Hub()
        self.link = DispatcherLink(ctx.paths["socket"], self.hub.on_event, self.on_link)
        self.hub.link = self.link

    def on_link(self, up: bool) -> None:
        self.hub.on_state(up)
        self.heartbeat()

    def heartbeat(self) -> None:
        msg = {"t": "hb", "ready": self.server is not None, "url": self.url, "listen": self.listen,
               "token_file": self.token_file, "dispatcher": self.link.connected.is_set(),
               "pages": len(self.hub.pages)}
        if self.error:
            msg["error"] = self.error
        roles.send(self.ctx.channel, msg)

    async def serve(self) -> bool:
        """Bind and start; False (and ``self.error`` set) if that failed."""
        from daemon.web.app import BoardApp
        from daemon.web.security import Gate, load_token
        web = self.cfg["web"]
        self.token_file = token_path(self.cfg, self.ctx.paths)
        try:
            token = load_token(self.token_file)
            sock = self.bind_remembered(web["listen"])
        except (OSError, ValueError) as exc:
            self.error = str(exc)
            log.error("web.bind_failed", listen=web["listen"], token_file=self.token_file, error=self.error)
            return False
        hostport = url_host(sock)
        port = sock.getsockname()[1]
        host, _ = config_mod.parse_listen(web["listen"])
        hosts = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")} | {hostport.lower()}
        if not host.startswith("["):
            hosts.add(f"{host.lower()}:{port}")
        wildcard = sock.getsockname()[0] in ("0.0.0.0", "::")
        app = BoardApp(self.link, self.hub, self.cfg, self.ctx.paths, token, hostport)
        self.app = app
        gate = Gate(app.asgi(), token, port, hosts, any_ip_host=wildcard and web["allow_remote"])
        server = Server(sock, gate)
        await server.start()
        self.server, self.error = server, None
        shown = f"127.0.0.1:{port}" if wildcard else hostport
        self.listen, self.url = hostport, f"http://{shown}/"
        log.info("web.listening", listen=hostport, url=self.url, token_file=self.token_file)
        return True

    def bind_remembered(self, listen: str) -> socket.socket:
        """Bind ``listen``; with port 0, the port this board had last time first, so an open page and a
        URL handed out survive a restart of the role or the daemon (``<state_dir>/web.port``)."""
        host, port = config_mod.parse_listen(listen)
        memo = os.path.join(self.ctx.paths["state_dir"], "web.port")
        if port == 0:
            try:
                with open(memo) as f:
                    last = int(f.read().split()[0])
                return bind(f"[{host}]:{last}" if ":" in host else f"{host}:{last}")
            except (OSError, ValueError, IndexError):
                pass  # none yet, or taken meanwhile: any free port
        sock = bind(listen)
        if port == 0:
            tmp = f"{memo}.{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(f"{sock.getsockname()[1]}\n")
            os.replace(tmp, memo)
        return sock

    async def unserve(self) -> None:
        self.hub.close()
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()
        self.url = self.listen = None

    def on_channel(self) -> None:
        msgs = roles.recv(self.ctx.channel)
        if msgs is None:
            log.warning("web.supervisor_gone")
            self.stopping.set()
            return
        for msg in msgs:
            if msg.get("t") == "config":
                old = self.cfg["web"]
                self.cfg = msg["cfg"]
                if any(old[k] != self.cfg["web"][k] for k in REBIND_KEYS):
                    asyncio.ensure_future(self.rebind())
                elif self.app is not None:
                    self.app.cfg = self.cfg  # age tiers, upload limit: read per request
                log.info("config.applied", file=self.cfg.get("_file"))

    async def rebind(self) -> None:
        log.info("web.rebinding", listen=self.cfg["web"]["listen"])
        await self.unserve()
        if not await self.serve():
            self.heartbeat()
            self.exit_code = 1
            self.stopping.set()
        else:
            self.heartbeat()

    def on_signal(self, wake: socket.socket) -> None:
        sigs = roles.read_signals(wake)
        if signal.SIGTERM in sigs or signal.SIGINT in sigs:
            if roles.orphaned(self.ctx):
                os._exit(0)
            self.stopping.set()

    async def beat(self) -> None:
        while True:
            self.heartbeat()
            await asyncio.sleep(self.cfg["supervisor"]["heartbeat_interval"])

    async def main(self) -> int:
        logging.getLogger("uvicorn").setLevel(logging.WARNING)
        loop = asyncio.get_running_loop()
        wake = roles.wakeup_socket(self.ctx)
        loop.add_reader(wake.fileno(), self.on_signal, wake)
        loop.add_reader(self.ctx.channel.fileno(), self.on_channel)
        if not await self.serve():
            self.heartbeat()  # the supervisor keeps the error for daemon.status, then restarts us with backoff
            return 1
        following = asyncio.ensure_future(self.link.run())
        beating = asyncio.ensure_future(self.beat())
        await self.stopping.wait()
        beating.cancel()
        await self.unserve()
        self.link.close()
        following.cancel()
        log.info("web.stopped")
        return self.exit_code


def run(ctx: roles.RoleContext) -> int:
    """Role entry point."""
    roles.enter(ctx)
    return asyncio.run(WebRole(ctx).main())
