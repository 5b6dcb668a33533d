"""``kanban mcp`` against a real daemon, driven by the official MCP SDK's own stdio client.

The SDK's client launches the installed ``kanban mcp`` as a real process: as an operator from
the test (the board tools), and from inside runs, where a small Python "agent" (the worker
command) speaks MCP to its own ``kanban mcp`` to read its context, create children, comment,
attach, heartbeat, block, review and complete. The schemas are checked against the registry.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import jsonschema
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from client import mcp as kmcp
from client import protocol
from tests.harness import KANBAN, wait_for, write_script

#: The tool sets the issue asks for.
WORKER_NAMES = {"kanban_context", "kanban_complete", "kanban_block", "kanban_heartbeat", "kanban_comment",
                "kanban_create", "kanban_link", "kanban_attach"}
BOARD_NAMES = {"kanban_list", "kanban_show", "kanban_create", "kanban_link", "kanban_assign", "kanban_plan",
               "kanban_stats", "kanban_approve", "kanban_request_changes", "kanban_retry", "kanban_context"}

#: The worker command of the agent tests: a Python "agent" that speaks MCP, through the SDK's client, to the
#: `kanban mcp` it starts (with the SDK's default, scrubbed environment: no KANBAN_* variables at all).
AGENT = r'''
import json, os, sys, anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

MODE, REPORT = os.environ["AGENT_MODE"], os.environ["AGENT_REPORT"]
TASK = os.environ["KANBAN_TASK"]

def out(res):
    return {"error": res.is_error, "text": res.content[0].text if res.content else "",
            "data": res.structured_content}

async def main():
    report = {"mode": MODE, "task": TASK}
    server = StdioServerParameters(command="kanban", args=["mcp"])  # env: the SDK's default whitelist only
    async with stdio_client(server) as (r, w):
        async with ClientSession(r, w) as s:
            init = await s.initialize()
            report["instructions"] = init.instructions
            report["tools"] = sorted(t.name for t in (await s.list_tools()).tools)
            call = lambda name, **args: s.call_tool(name, args)
            ctx = out(await call("kanban_context"))
            report["context"] = ctx
            if MODE == "parent":
                report["heartbeat"] = out(await call("kanban_heartbeat", note="reading the task"))
                report["comment"] = out(await call("kanban_comment", body="splitting this in two"))
                a = out(await call("kanban_create", title="child A", assignee="child"))
                b = out(await call("kanban_create", title="child B", assignee="child"))
                report["children"] = [a, b]
                report["link"] = out(await call("kanban_link", parent=a["data"]["id"], child=b["data"]["id"]))
                report["link_outside"] = out(await call("kanban_link", parent=os.environ["OUTSIDER"],
                                                        child=a["data"]["id"]))
                with open("notes.txt", "w") as f:
                    f.write("the parent's notes\n")
                report["attach"] = out(await call("kanban_attach", files=["notes.txt"]))
                res = await s.read_resource(f"kanban://task/{TASK}")
                report["resource"] = res.contents[0].text
                report["bad_arg"] = out(await call("kanban_complete", summary="x", ids=["t_00000000"]))
                report["complete"] = out(await call("kanban_complete", summary="split into A and B",
                                                     result="the parent's answer: 42", metadata={"answer": 42}))
            elif MODE == "child":
                report["complete"] = out(await call("kanban_complete", summary="child saw the parent's result"))
            elif MODE == "block":
                report["block"] = out(await call("kanban_block", reason="needs a human decision"))
            elif MODE == "review":
                report["approve"] = out(await call("kanban_approve", comment="looks right"))
    with open(os.path.join(REPORT, f"{TASK}.{MODE}.json"), "w") as f:
        json.dump(report, f)

anyio.run(main)
'''


# ---- the schemas come from the registry ----------------------------------------------------------


def _all_tools() -> list[kmcp.Tool]:
    return [*kmcp.WORKER_TOOLS, *kmcp.REVIEW_TOOLS, *kmcp.BOARD_TOOLS]


def test_tool_sets_are_the_ones_the_issue_names():
    assert {t.name for t in kmcp.WORKER_TOOLS} == WORKER_NAMES
    assert {t.name for t in kmcp.BOARD_TOOLS} == BOARD_NAMES
    assert {t.name for t in kmcp.REVIEW_TOOLS} == {"kanban_approve", "kanban_request_changes"}
    for tools in (kmcp.WORKER_TOOLS, kmcp.REVIEW_TOOLS, kmcp.BOARD_TOOLS):
        assert len({t.name for t in tools}) == len(tools)


@pytest.mark.parametrize("tool", _all_tools(), ids=lambda t: f"{t.name}:{t.method}")
def test_tool_schema_is_the_registry_s(tool):
    method = protocol.METHODS[tool.method]
    assert not method.internal and not method.stream
    schema = kmcp.input_schema(tool)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    declared = {p.name: p for p in method.params}
    extras = {p.name: p for p in tool.extra}
    # every param of the method is in the schema, unless the server fills it (and says so)
    expected = {n for n in declared if n not in tool.hide and n not in kmcp.SERVER_FILLED} | set(extras)
    assert set(schema["properties"]) == expected
    for name, prop in schema["properties"].items():
        p = declared.get(name) or extras[name]
        kind = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "list": "array",
                "dict": "object"}[p.type]
        assert prop["type"] == ([kind, "null"] if p.nullable else kind)
        assert prop.get("description") == p.doc
        if p.type == "str":
            assert prop["maxLength"] == p.max_len
            assert prop.get("enum") == ([*p.choices, *([None] if p.nullable else [])] if p.choices else None)
        if p.type in ("int", "float"):
            assert (prop["minimum"], prop["maximum"]) == (p.min, p.max)
        if p.type == "list":
            assert prop["items"] == {"type": "string", "maxLength": p.max_len}
            assert prop["maxItems"] == p.max_items
    required = set(schema.get("required", []))
    for name in schema["properties"]:
        p = declared.get(name) or extras[name]
        assert (name in required) == ((p.required or name in tool.required) and name != tool.current), name
    # hidden params are hidden because the server fills them: the run token, the request id, the current task
    for name in tool.hide:
        assert name in declared and (name == tool.current or name in ("size",)), name


def test_a_registry_change_shows_in_the_tool_schema(monkeypatch):
    """The schema is generated, not copied: a param bound changed in the registry changes the tool."""
    summary = next(p for p in protocol.METHODS["task.complete"].params if p.name == "summary")
    tool = next(t for t in kmcp.WORKER_TOOLS if t.name == "kanban_complete")
    assert kmcp.input_schema(tool)["properties"]["summary"]["maxLength"] == summary.max_len == 64 * 1024
    monkeypatch.setattr(summary, "max_len", 123)
    assert kmcp.input_schema(tool)["properties"]["summary"]["maxLength"] == 123


# ---- helpers ----------------------------------------------------------------------------------------


def _session(d, body, errlog: str | None = None, env: dict | None = None):
    """Launch `kanban mcp` with the SDK's stdio client as an operator (from the test) and run ``body(session)``."""
    async def main():
        server = StdioServerParameters(command=KANBAN, args=["mcp"], cwd=d.tmp,
                                       env={"KANBAN_SOCKET": d.socket, "KANBAN_TEST_ID": d.tmp, **(env or {})})
        with open(errlog or os.devnull, "w") as err:
            async with stdio_client(server, errlog=err) as (r, w):
                async with ClientSession(r, w) as s:
                    await s.initialize()
                    return await body(s)
    return anyio.run(main)


def _ok(res) -> dict:
    assert not res.is_error, res.content[0].text
    return res.structured_content


def _err(res) -> dict:
    assert res.is_error, f"expected a tool error, got {res.structured_content}"
    err = res.structured_content["error"]
    assert res.content[0].text.startswith(f"{err['name']}: ")
    return err


# ---- operator: the board tools ------------------------------------------------------------------------


def test_board_tools_as_an_operator(make_daemon):
    d = make_daemon(start=False)
    ok = write_script(f"{d.tmp}/ok.sh", "#!/bin/sh\nkanban complete --summary \"did $KANBAN_TASK\" --result r1\n")
    d.cfg["profiles"] = {"ok": {"command": [ok]}}
    d.write_config(d.cfg)
    d.start()

    async def body(s):
        names = {t.name for t in (await s.list_tools()).tools}
        assert names == BOARD_NAMES
        wait = lambda tid, st: anyio.to_thread.run_sync(lambda: d.wait_status(tid, st))
        a = _ok(await s.call_tool("kanban_create", {"title": "alpha", "assignee": "ok", "review": True}))
        b = _ok(await s.call_tool("kanban_create", {"title": "beta"}))
        assert _ok(await s.call_tool("kanban_link", {"parent": a["id"], "child": b["id"]}))["child_status"] == "todo"
        assert _ok(await s.call_tool("kanban_assign", {"id": b["id"], "assignee": "ok"}))["assignee"] == "ok"
        listed = _ok(await s.call_tool("kanban_list", {}))
        assert {a["id"], b["id"]} <= {t["id"] for t in listed["tasks"]}
        shown = _ok(await s.call_tool("kanban_show", {"id": b["id"]}))
        assert [p["id"] for p in shown["parents"]] == [a["id"]]
        assert "by_status" in _ok(await s.call_tool("kanban_stats", {}))
        assert "plan" in _ok(await s.call_tool("kanban_plan", {}))
        await wait(a["id"], "review")
        approved = _ok(await s.call_tool("kanban_approve", {"ids": [a["id"]], "comment": "fine"}))
        assert approved["tasks"][0]["status"] == "done" and approved["promoted"] == [b["id"]]
        await wait(b["id"], "done")
        ctx = await s.call_tool("kanban_context", {"id": b["id"]})
        assert not ctx.is_error and f"### {a['id']}: alpha (done)" in ctx.content[0].text
        assert ctx.structured_content["parents"][0]["result"] == "r1"
        c = _ok(await s.call_tool("kanban_create", {"title": "gamma", "assignee": "ok", "review": True}))
        await wait(c["id"], "review")
        sent = _ok(await s.call_tool("kanban_request_changes", {"id": c["id"], "comment": "more tests"}))
        assert sent["tasks"][0]["status"] in ("ready", "running")
        retried = _ok(await s.call_tool("kanban_retry", {"ids": [a["id"]], "reason": "once more"}))
        assert retried["tasks"][0]["id"] == a["id"]
        res = await s.read_resource(f"kanban://task/{b['id']}")
        assert res.contents[0].text.startswith(f"# Task {b['id']}: beta")
        templates = (await s.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["kanban://task/{id}"]
        # errors are tool errors with the daemon's error name, and the server goes on
        assert _err(await s.call_tool("kanban_show", {"id": "t_00000000"}))["name"] == "not_found"
        assert _err(await s.call_tool("kanban_link", {"parent": b["id"], "child": a["id"]}))["name"] == "conflict"
        bad = _err(await s.call_tool("kanban_create", {"title": "x", "bogus": 1}))
        assert bad["name"] == "invalid_params" and bad["data"]["field"] == "bogus"
        assert _err(await s.call_tool("kanban_create", {"title": "x", "priority": "high"}))["data"]["field"] == \
            "priority"
        assert _err(await s.call_tool("kanban_complete", {"summary": "no"}))["name"] == "method_not_found"
        assert _err(await s.call_tool("kanban_context", {}))["name"] == "invalid_params"
        with pytest.raises(Exception, match="not_found"):
            await s.read_resource("kanban://task/t_00000000")
        return _ok(await s.call_tool("kanban_stats", {}))

    assert _session(d, body)["total"] >= 3


def test_the_server_rides_out_a_daemon_restart(make_daemon, tmp_path):
    d = make_daemon()
    errlog = str(tmp_path / "mcp.err")

    async def body(s):
        first = _ok(await s.call_tool("kanban_create", {"title": "before the restart"}))
        await anyio.to_thread.run_sync(d.stop)
        async with anyio.create_task_group() as tg:
            answers = []

            async def call():
                answers.append(await s.call_tool("kanban_show", {"id": first["id"]}))
            tg.start_soon(call)
            await anyio.to_thread.run_sync(lambda: wait_for(
                lambda: "retrying" in Path(errlog).read_text(), what="the server to say it is retrying"))
            await anyio.to_thread.run_sync(d.start)
        shown = _ok(answers[0])
        after = _ok(await s.call_tool("kanban_create", {"title": "after the restart"}))
        return shown, after

    shown, after = _session(d, body, errlog=errlog)
    assert shown["task"]["title"] == "before the restart"
    assert d.task(after["id"])["title"] == "after the restart"


def test_an_unreachable_daemon_is_a_tool_error_not_a_crash(make_daemon, tmp_path):
    d = make_daemon()

    async def body(s):
        await anyio.to_thread.run_sync(d.stop)
        gone = _err(await s.call_tool("kanban_stats", {}))
        await anyio.to_thread.run_sync(d.start)
        return gone, _ok(await s.call_tool("kanban_stats", {}))

    gone, stats = _session(d, body, env={"KANBAN_RETRY_FOR": "0.5"})
    assert gone["name"] == "not_running" and d.socket in gone["message"]
    assert "by_status" in stats


# ---- inside runs: a Python agent speaks MCP to its own `kanban mcp` -----------------------------------


def _agent_daemon(make_daemon, extra_profiles: dict | None = None):
    d = make_daemon(start=False)
    agent = write_script(f"{d.tmp}/agent.py", AGENT)
    reports = os.path.join(d.tmp, "reports")
    os.makedirs(reports)

    def prof(mode: str, **kw) -> dict:
        return {"command": [sys.executable, agent], "env": {"AGENT_MODE": mode, "AGENT_REPORT": reports}, **kw}

    d.cfg["profiles"] = {"parent": prof("parent"), "child": prof("child"), "blocker": prof("block"),
                         **(extra_profiles or {})}
    return d, reports, prof


def _report(reports: str, task_id: str, mode: str) -> dict:
    path = os.path.join(reports, f"{task_id}.{mode}.json")
    wait_for(lambda: os.path.exists(path), timeout=30, what=f"the agent's report for {task_id}")
    return json.loads(Path(path).read_text())


def test_an_agent_reads_its_context_fans_out_and_completes_through_mcp(make_daemon):
    d, reports, _ = _agent_daemon(make_daemon)
    d.write_config(d.cfg)
    d.start()
    outsider = d.cli_json("create", "not the agent's", "--triage")
    d.cfg["profiles"]["parent"]["env"]["OUTSIDER"] = outsider["id"]
    d.write_config(d.cfg)
    d.cli("reload")
    parent = d.cli_json("create", "plan the work", "-a", "parent", "-b", "Split this into two steps.")
    rep = _report(reports, parent["id"], "parent")

    assert set(rep["tools"]) == WORKER_NAMES  # a worker's run: the worker tools only
    assert parent["id"] in rep["instructions"]
    assert not rep["context"]["error"] and rep["context"]["text"].startswith(f"# Task {parent['id']}: plan the work")
    assert "Split this into two steps." in rep["context"]["text"]
    assert not rep["heartbeat"]["error"] and rep["heartbeat"]["data"]["run"]
    assert rep["comment"]["data"]["body"] == "splitting this in two"
    a, b = (c["data"] for c in rep["children"])
    assert a["parents"] == [parent["id"]] and b["parents"] == [parent["id"]] and a["status"] == "todo"
    link = rep["link"]["data"]
    assert (link["parent"], link["child"], link["child_status"]) == (a["id"], b["id"], "todo")
    denied = rep["link_outside"]
    assert denied["error"] and denied["data"]["error"]["name"] == "permission_denied"
    assert denied["text"].startswith("permission_denied: task.link: a worker links only tasks under its own task")
    assert rep["attach"]["data"]["attachments"][0]["name"] == "notes.txt"
    assert rep["resource"].startswith(f"# Task {parent['id']}: plan the work")
    assert rep["bad_arg"]["data"]["error"]["name"] == "invalid_params"  # ids is the server's, not the model's
    assert not rep["complete"]["error"]

    done = d.wait_status(parent["id"], "done")
    assert done["summary"] == "split into A and B" and done["result"] == "the parent's answer: 42"
    shown = d.rpc("task.show", {"id": parent["id"]})
    assert [c["body"] for c in shown["comments"]] == ["splitting this in two"]
    assert shown["comments"][0]["author"] == "parent"
    events = d.rpc("events.since", {"task": parent["id"], "kinds": ["heartbeat"]})["events"]
    assert any(e["payload"].get("note") == "reading the task" for e in events)
    assert [x["name"] for x in d.rpc("task.attachments", {"id": parent["id"]})["attachments"]] == ["notes.txt"]

    # the children run (A first: B waits for it), and the parent's result reaches them through kanban_context
    for child in (a, b):
        d.wait_status(child["id"], "done", timeout=30)
        crep = _report(reports, child["id"], "child")
        assert set(crep["tools"]) == WORKER_NAMES
        text = crep["context"]["text"]
        if child is a:
            assert f"### {parent['id']}: plan the work (done)" in text
            assert "the parent's answer: 42" in text and '"answer": 42' in text
        else:
            assert f"### {a['id']}: child A (done)" in text
    assert d.task(a["id"])["summary"] == "child saw the parent's result"


def test_an_agent_blocks_through_mcp(make_daemon):
    d, reports, _ = _agent_daemon(make_daemon)
    d.write_config(d.cfg)
    d.start()
    t = d.cli_json("create", "ask a human", "-a", "blocker")
    rep = _report(reports, t["id"], "block")
    assert not rep["block"]["error"], rep["block"]
    blocked = d.wait_status(t["id"], "blocked")
    assert blocked["block_reason"] == "needs a human decision"


def test_a_reviewer_agent_gets_the_review_tools_and_approves(make_daemon):
    d, reports, prof = _agent_daemon(make_daemon)
    d.cfg["profiles"]["child"]["review_by"] = "reviewer"
    d.cfg["profiles"]["reviewer"] = prof("review")
    d.write_config(d.cfg)
    d.start()
    t = d.cli_json("create", "reviewed work", "-a", "child")
    d.wait_status(t["id"], "done", timeout=30)
    rep = _report(reports, t["id"], "review")
    assert _report(reports, t["id"], "child")["tools"] == sorted(WORKER_NAMES)  # the implementer's run: no review
    assert set(rep["tools"]) == WORKER_NAMES | {"kanban_approve", "kanban_request_changes"}
    assert "review" in rep["instructions"]
    assert not rep["approve"]["error"], rep["approve"]
    assert any(c["body"] == "looks right" for c in d.rpc("task.show", {"id": t["id"]})["comments"])


def test_an_orchestrator_run_gets_the_board_tools_too(make_daemon):
    d, reports, prof = _agent_daemon(make_daemon, {})
    d.cfg["profiles"]["boss"] = prof("child", role="orchestrator")
    d.write_config(d.cfg)
    d.start()
    t = d.cli_json("create", "orchestrate", "-a", "boss")
    rep = _report(reports, t["id"], "child")
    assert set(rep["tools"]) == WORKER_NAMES | BOARD_NAMES
    assert "orchestrator" in rep["instructions"]
    d.wait_status(t["id"], "done")


def test_docs_name_every_tool():
    text = (Path(__file__).resolve().parents[2] / "docs" / "agents.md").read_text()
    for tool in _all_tools():
        assert f"`{tool.name}`" in text, f"docs/agents.md does not mention {tool.name}"
