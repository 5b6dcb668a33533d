"""The baseline server: a bare newline-JSON echo server on a Unix socket.

Runs in: its own process, started by the benchmarks with the same interpreter
as the daemon. One selectors loop, non-blocking sockets, no threads, exactly
the daemon's transport shape minus everything kanband does (reading with the
idiomatic ``recv(65536)``): each request line
is parsed with ``json.loads`` and answered with ``{"jsonrpc": "2.0", "id": ...,
"result": <the request's params>}``. Prints ``listening`` when ready; stops
on SIGTERM. Stdlib only.

Usage: python bench/echo_server.py SOCKET_PATH
"""

import json
import os
import selectors
import signal
import socket
import sys


def main(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(512)
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ, None)
    bufs: dict[socket.socket, bytearray] = {}
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print("listening", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                try:
                    conn, _ = srv.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                bufs[conn] = bytearray()
                sel.register(conn, selectors.EVENT_READ, "c")
                continue
            conn = key.fileobj
            try:
                chunk = conn.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                sel.unregister(conn)
                bufs.pop(conn, None)
                conn.close()
                continue
            buf = bufs[conn]
            buf += chunk
            out = bytearray()
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                line = bytes(buf[:nl])
                del buf[:nl + 1]
                try:
                    req = json.loads(line)
                    resp = {"jsonrpc": "2.0", "id": req.get("id"), "result": req.get("params")}
                except ValueError:
                    resp = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}
                out += json.dumps(resp, separators=(",", ":")).encode() + b"\n"
            if out:
                conn.setblocking(True)
                try:
                    conn.sendall(out)
                except OSError:
                    pass
                conn.setblocking(False)


if __name__ == "__main__":
    main(sys.argv[1])
