"""The web role over plain HTTP (issue 14): the gate (token, Host, CSRF, CSP), the API, the event
stream, ``kanban web``, and the role's place in supervision (not essential; follows web.enabled).

Real daemon, real web role, real sockets; requests with ``http.client`` (the browser tests are in
test_web_browser.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import urllib.parse

import psutil

from tests.harness import KANBAND, merge, relay_command, wait_for, write_script
from tests.webtools import WEB_ON, board_url, request, session, split, web_role

WD_USEC = 400_000


def _frame(rid: int, method: str, params: dict) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode() + b"\n"


def test_no_token_gets_401_and_nothing_else(make_daemon):
    d = make_daemon(WEB_ON)
    hostport, token = split(board_url(d))
    for path in ("/", "/static/app.js", "/static/style.css", "/api/board", "/api/meta", "/api/events", "/nope",
                 f"/?token={token[:-1]}x", "/?token="):
        status, headers, body = request(hostport, "GET", path)
        assert (status, body) == (401, b""), (path, status, body)
        assert "script-src 'self'" in headers["content-security-policy"]
    status, _, body = request(hostport, "POST", "/api/rpc/task.create", body=b'{"title": "sneaky"}',
                              headers={"Content-Type": "application/json"})
    assert (status, body) == (401, b"")
    status, _, _ = request(hostport, "GET", "/", headers={"Cookie": f"kanban_1={token}"})  # another port's cookie
    assert status == 401
    assert d.cli_json("list")["tasks"] == []


def test_token_once_then_an_httponly_samesite_strict_cookie(make_daemon):
    d = make_daemon(WEB_ON)
    hostport, token = split(board_url(d))
    port = hostport.rsplit(":", 1)[1]
    status, headers, body = request(hostport, "GET", f"/?token={token}")
    assert status == 303 and headers["location"] == "/", headers  # the token leaves the address bar
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"kanban_{port}={token};")  # named after the port: boards on other ports keep theirs
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    status, headers, page = request(hostport, "GET", "/", headers={"Cookie": cookie.split(";")[0]})
    assert status == 200 and b'<meta name="csrf" content="' in page
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-eval" not in csp
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert token.encode() not in page, "the token itself never reaches the page's script"
    status, headers, js = request(hostport, "GET", "/static/app.js", headers={"Cookie": cookie.split(";")[0]})
    assert status == 200 and headers["content-type"].startswith("text/javascript") and b"import" in js


def test_wrong_host_is_refused(make_daemon):
    d = make_daemon(WEB_ON)
    hostport, hdrs = session(d)
    port = hostport.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{int(port) + 1}", f"attacker.localhost:{port}"):
        status, headers, body = request(hostport, "GET", "/api/board", headers={**hdrs, "Host": host})
        assert status == 403 and b"Host" in body, (host, status, body)
        assert "content-security-policy" in headers
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        status, _, _ = request(hostport, "GET", "/api/board", headers={**hdrs, "Host": host})
        assert status == 200, host


def test_mutations_need_the_csrf_header_and_our_origin(make_daemon):
    d = make_daemon(WEB_ON)
    hostport, hdrs = session(d)
    body = json.dumps({"title": "via http"}).encode()
    cookie_only = {"Cookie": hdrs["Cookie"], "Content-Type": "application/json"}
    for extra in ({}, {"X-Kanban-CSRF": "0" * 64}):
        status, _, msg = request(hostport, "POST", "/api/rpc/task.create", body, {**cookie_only, **extra})
        assert status == 403 and b"X-Kanban-CSRF" in msg
    status, _, _ = request(hostport, "POST", "/api/rpc/task.create", body,
                           {**hdrs, "Origin": "http://evil.example"})
    assert status == 403
    assert d.cli_json("list")["tasks"] == []
    status, _, out = request(hostport, "POST", "/api/rpc/task.create", body, {**hdrs, "Origin": f"http://{hostport}"})
    assert status == 200
    t = json.loads(out)
    assert d.cli_json("show", t["id"])["task"]["title"] == "via http"


def test_api_speaks_the_public_methods_only_with_named_errors(make_daemon):
    d = make_daemon(WEB_ON)
    hostport, hdrs = session(d)
    status, _, out = request(hostport, "GET", "/api/meta", headers=hdrs)
    meta = json.loads(out)
    assert "task.create" in meta["methods"] and "parents" in meta["methods"]["task.create"]
    assert not any(m.split(".")[0] in ("reaper", "run", "notifier") for m in meta["methods"])
    assert "events.follow" not in meta["methods"]
    status, _, out = request(hostport, "POST", "/api/rpc/reaper.attach", b'{"pid": 1}', hdrs)
    assert status == 403 and json.loads(out)["error"]["data"]["name"] == "permission_denied"
    status, _, out = request(hostport, "POST", "/api/rpc/no.such", b"{}", hdrs)
    assert status == 404 and json.loads(out)["error"]["data"]["name"] == "method_not_found"
    status, _, out = request(hostport, "POST", "/api/rpc/task.show", b'{"id": "t_00000000"}', hdrs)
    assert status == 404 and "t_00000000" in json.loads(out)["error"]["message"]
    tid = d.cli_json("create", "x")["id"]
    d.cli("block", tid, "-r", "r")
    status, _, out = request(hostport, "POST", "/api/rpc/task.complete", json.dumps({"ids": [tid]}).encode(), hdrs)
    err = json.loads(out)["error"]
    assert status == 409 and err["data"]["name"] == "illegal_transition" and "cannot complete" in err["message"]
    status, _, out = request(hostport, "POST", "/api/rpc/task.create", b"[1]", hdrs)
    assert status == 400 and json.loads(out)["error"]["data"]["name"] == "invalid_params"
    status, _, out = request(hostport, "GET", "/api/board", headers=hdrs)
    assert [t["id"] for t in json.loads(out)["tasks"]] == [tid]


def test_event_stream_pushes_each_event_with_its_task(make_daemon):
    d = make_daemon(WEB_ON)
    hostport, hdrs = session(d)
    host, port = hostport.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    try:
        s.sendall(f"GET /api/events HTTP/1.1\r\nHost: {hostport}\r\nCookie: {hdrs['Cookie']}\r\n\r\n".encode())
        buf = b""
        while b"event: hello" not in buf:
            buf += s.recv(65536)
        assert b"text/event-stream" in buf
        tid = d.cli_json("create", "streamed", "--priority", "2")["id"]
        d.cli("block", tid, "-r", "because")
        frames: dict[str, dict] = {}
        while "blocked" not in frames:
            chunk = s.recv(65536)
            assert chunk, "the stream ended"
            buf += chunk
            for line in buf.decode().splitlines():
                if line.startswith('data: {"event"'):
                    frame = json.loads(line[6:])
                    frames.setdefault(frame["event"]["kind"], frame)
        created, blocked = frames["created"], frames["blocked"]
        assert created["event"]["kind"] == "created" and created["task"]["id"] == tid
        assert created["task"]["priority"] == 2
        assert blocked["event"]["kind"] == "blocked" and blocked["task"]["status"] == "blocked"
        assert blocked["task"]["block_reason"] == "because"
    finally:
        s.close()


def test_kanban_web_and_status_show_the_board_address(make_daemon):
    d = make_daemon(WEB_ON)
    url = board_url(d)
    hostport, token = split(url)
    assert hostport.startswith("127.0.0.1:") and int(hostport.split(":")[1]) > 0  # web.listen 127.0.0.1:0
    info = d.cli_json("web")
    assert info["url"] == url and info["base"] == f"http://{hostport}/" and info["listen"] == hostport
    tf = info["token_file"]
    assert tf == os.path.join(d.state, "web.token")
    assert stat.S_IMODE(os.stat(tf).st_mode) == 0o600 and open(tf).read().strip() == token
    out = d.cli("status").stdout
    assert "web (optional)" in out and f"http://{hostport}/" in out and token not in out
    web = wait_for(lambda: (w := web_role(d))["dispatcher"] and w, what="the web role following the dispatcher")
    assert web["essential"] is False and web["state"] == "ok"
    # the role comes back after a kill -9 at the same address with the same token
    os.kill(web["pid"], signal.SIGKILL)
    wait_for(lambda: (w := web_role(d))["pid"] != web["pid"] and w["state"] == "ok", what="the web role restarted")
    assert board_url(d) == url, "same port (web.port) and same token: URLs already handed out keep working"
    # and after a restart of the whole daemon
    d.stop()
    d.start()
    assert board_url(d) == url


def test_web_url_is_refused_to_workers(make_daemon):
    d = make_daemon(WEB_ON, start=False)
    argv, relay = relay_command(d.tmp)
    d.cfg.setdefault("profiles", {})["idle"] = {"command": argv}
    d.write_config(d.cfg)
    d.start()
    web_role(d)
    tid = d.cli_json("create", "w", "-a", "idle")["id"]
    d.wait_status(tid, "running")
    run = d.rpc("task.runs", {"id": tid})["runs"][0]["id"]
    path = relay.replace("$KANBAN_RUN", run)
    wait_for(lambda: os.path.exists(path), what="the worker's relay socket")
    (answer,) = d.raw(_frame(1, "web.url", {}), path=path)
    assert answer["error"]["data"]["name"] == "permission_denied", answer
    assert "operator" in answer["error"]["message"]
    assert d.cli_json("web")["url"].startswith("http://127.0.0.1:")  # the operator still gets it


def test_a_web_role_that_cannot_bind_never_stops_the_board(make_daemon):
    """The port is taken: READY comes anyway, the watchdog keeps being fed, STATUS= and `kanban status`
    name the web role and why, work is dispatched and finished; once the port is free the board comes up."""
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    d = make_daemon({"web": {"enabled": True, "listen": f"127.0.0.1:{port}"}}, start=False, watchdog_usec=WD_USEC)
    try:
        script = write_script(os.path.join(d.tmp, "ok.sh"), "#!/bin/sh\nkanban complete --summary fine\n")
        d.cfg.setdefault("profiles", {})["ok"] = {"command": [script]}
        d.write_config(d.cfg)
        d.start()
        web = wait_for(lambda: (w := next(r for r in d.cli_json("status")["roles"] if r["name"] == "web"))
                       and w["restarts"] >= 2 and w, what="the web role to fail and be retried")
        assert web["state"] in ("restarting", "flapping", "starting") and web["essential"] is False
        assert f"cannot listen on 127.0.0.1:{port}" in web["error"] and "in use" in web["error"]
        assert f"cannot listen on 127.0.0.1:{port}" in d.cli("status").stdout
        line = wait_for(lambda: [m for _, m in d.notify.lines("STATUS=") if "optional: web " in m
                                 and "web ok" not in m], what="STATUS= naming the web role")[-1]
        assert "dispatcher ok, reaper ok, notifier ok" in line
        # the watchdog keeps being fed while the web role is down
        t0 = d.notify.lines("STATUS=")[-1][0]
        wait_for(lambda: len([t for t, _ in d.notify.lines("WATCHDOG=1") if t > t0]) >= 3, what="WATCHDOG=1")
        # and the board keeps dispatching
        tid = d.cli_json("create", "still works", "-a", "ok")["id"]
        assert d.wait_status(tid, "done")["summary"] == "fine"
        res = d.cli("web", check=False)
        assert res.returncode == 1 and "unavailable" in res.stderr and "cannot listen" in res.stderr
        supervisor = psutil.Process(d.pid)
        assert supervisor.is_running()
    finally:
        blocker.close()
    url = wait_for(lambda: d.cli("web", check=False).stdout.strip(), timeout=20, what="the web board after the port freed")
    assert url.startswith(f"http://127.0.0.1:{port}/?token=")
    assert next(r for r in d.cli_json("status")["roles"] if r["name"] == "web").get("error") is None


def test_web_enabled_follows_the_config_and_reloads(make_daemon):
    d = make_daemon()  # the harness turns the web role off
    assert [r["name"] for r in d.cli_json("status")["roles"]] == ["dispatcher", "reaper", "notifier"]
    res = d.cli("web", check=False)
    assert res.returncode == 1 and "web.enabled: false" in res.stderr
    d.write_config(merge(d.cfg, WEB_ON))
    os.kill(d.pid, signal.SIGHUP)
    web = web_role(d)
    assert web["state"] == "ok" and board_url(d).startswith("http://127.0.0.1:")
    d.write_config(d.cfg)
    os.kill(d.pid, signal.SIGHUP)
    wait_for(lambda: "web" not in [r["name"] for r in d.cli_json("status")["roles"]], what="the web role to stop")
    wait_for(lambda: not psutil.pid_exists(web["pid"]) or psutil.Process(web["pid"]).status() == psutil.STATUS_ZOMBIE,
             what="the web process to exit")
    assert not [line for line in d.log().splitlines() if '"role.died"' in line and '"web"' in line]


def test_reload_moves_the_board_to_a_new_listen_address(make_daemon):
    d = make_daemon(WEB_ON)
    first = split(board_url(d))[0]
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    d.write_config(merge(d.cfg, {"web": {"enabled": True, "listen": f"127.0.0.1:{port}"}}))
    os.kill(d.pid, signal.SIGHUP)
    wait_for(lambda: d.cli("web").stdout.startswith(f"http://127.0.0.1:{port}/"), what="the new address")
    hostport, hdrs = session(d)
    assert hostport == f"127.0.0.1:{port}" != first
    assert request(hostport, "GET", "/api/board", headers=hdrs)[0] == 200


def test_non_loopback_listen_is_refused_unless_allowed(make_daemon):
    d = make_daemon(start=False)
    d.write_config(merge(d.cfg, {"web": {"listen": "0.0.0.0:0"}}))
    res = subprocess.run([KANBAND, "--check-config", "--config", d.config_path], capture_output=True, text=True,
                         env=d.env(), timeout=30)
    assert res.returncode != 0 and "web.listen" in res.stderr and "allow_remote" in res.stderr
    d.write_config(merge(d.cfg, {"web": {"listen": "0.0.0.0:0", "allow_remote": True}}))
    res = subprocess.run([KANBAND, "--check-config", "--config", d.config_path], capture_output=True, text=True,
                         env=d.env(), timeout=30)
    assert res.returncode == 0, res.stderr
    d.write_config(merge(d.cfg, {"web": {"age_tiers": {"running": ["1h", "10m"]}}}))
    res = subprocess.run([KANBAND, "--check-config", "--config", d.config_path], capture_output=True, text=True,
                         env=d.env(), timeout=30)
    assert res.returncode != 0 and "web.age_tiers.running" in res.stderr


def test_kanban_web_open_hands_the_url_to_the_browser(make_daemon):
    d = make_daemon(WEB_ON)
    url = board_url(d)
    got = os.path.join(d.tmp, "opened")
    opener = write_script(os.path.join(d.tmp, "browser.sh"), f'#!/bin/sh\nprintf "%s" "$1" > {got}.tmp\nmv {got}.tmp {got}\n')
    res = d.cli("web", "--open", env={"BROWSER": opener, "DISPLAY": "", "WAYLAND_DISPLAY": ""})
    assert res.stdout.strip() == url
    assert wait_for(lambda: os.path.exists(got) and open(got).read(), what="the browser to be started") == url


def test_attachments_upload_and_download(make_daemon):
    """An upload through the web board is stored by the daemon under a sanitised name; the download is an
    attachment (never rendered inline), named with the stored name, as octet-stream.
    """
    d = make_daemon(WEB_ON)
    hostport, hdrs = session(d)
    tid = d.cli_json("create", "with a file")["id"]
    payload = b"<html><script>alert(1)</script></html>"
    status, _, out = request(hostport, "PUT", f"/api/tasks/{tid}/attachments?name=..%2F..%2Fevil%0A.html",
                             body=payload, headers=hdrs)
    assert status == 200, out
    status, _, out = request(hostport, "POST", "/api/rpc/task.attachments", json.dumps({"id": tid}).encode(), hdrs)
    items = json.loads(out)
    items = items.get("attachments", items) if isinstance(items, dict) else items
    (att,) = items
    name = att["name"]
    assert "/" not in name and "\n" not in name and ".." not in name and name
    quoted = urllib.parse.quote(name)
    status, headers, body = request(hostport, "GET", f"/api/tasks/{tid}/attachments/{quoted}", headers=hdrs)
    assert status == 200 and body == payload
    assert headers["content-disposition"].startswith("attachment;") and name in urllib.parse.unquote(
        headers["content-disposition"])
    assert headers["content-type"] == "application/octet-stream" and headers["x-content-type-options"] == "nosniff"
    status, _, _ = request(hostport, "GET", f"/api/tasks/{tid}/attachments/nope", headers=hdrs)
    assert status == 404
    # no token, no file
    assert request(hostport, "GET", f"/api/tasks/{tid}/attachments/{quoted}")[0] == 401


def test_hostile_bodies_get_an_immediate_named_error(make_daemon):
    """NaN, a body nested 100k deep and a body over the frame cap: each an immediate 4xx naming the
    error (the socket's own answers), never a 30 s wait, a 500 or a traceback."""
    d = make_daemon(WEB_ON)
    hostport, hdrs = session(d)
    for body, status, name in ((b'{"title":"x","priority":NaN}', 400, "parse_error"),
                               (b"[" * 100_000 + b"]" * 100_000, 400, "parse_error"),
                               (b'{"title":"' + b"x" * (2 << 20) + b'"}', 413, "frame_too_large")):
        got, _, out = request(hostport, "POST", "/api/rpc/task.create", body, hdrs)
        assert got == status and json.loads(out)["error"]["data"]["name"] == name, (got, out[:200])
    assert not [e for e in d.log_events() if "Traceback" in json.dumps(e)]
    assert d.cli_json("list")["tasks"] == []
