"""The request memory (daemon/board/requests.py) on a real SQLite board, and the client's retry settings."""

from __future__ import annotations

import pytest

from client import rpc
from client.protocol import METHODS, RPCError, check_params
from daemon.board import db, requests

NOW = 1_700_000_000.0


@pytest.fixture
def conn(tmp_path):
    c = db.connect(tmp_path / "board.db")
    yield c
    c.close()


def test_key_pops_the_request_id_and_keys_by_run():
    p = check_params(METHODS["task.complete"], {"ids": ["t_1"], "run": "r_1", "request_id": "q"})
    assert requests.key(METHODS["task.complete"], p) == ("r_1", "q")
    assert "request_id" not in p  # the handler never sees it
    p = check_params(METHODS["task.comment"], {"id": "t_1", "body": "b", "request_id": "q"})
    assert requests.key(METHODS["task.comment"], p) == (None, "q")
    assert requests.key(METHODS["task.complete"], {"ids": ["t_1"]}) is None
    for bad in ("", "  ", "x" * 129):
        with pytest.raises(RPCError) as ei:
            requests.key(METHODS["task.block"], {"ids": ["t_1"], "reason": "r", "request_id": bad})
        assert ei.value.name == "invalid_params" and ei.value.data["field"] == "request_id"


def test_worker_verbs_share_one_request_id_param():
    shared = {id(p) for name in ("task.complete", "task.block", "task.heartbeat", "task.comment")
              for p in METHODS[name].params if p.name == "request_id"}
    assert len(shared) == 1
    assert not [m for m in METHODS.values() if not m.writes and any(p.name == "request_id" for p in m.params)]


def test_recall_returns_the_first_answer_per_run_and_prunes_after_a_day(conn):
    with db.write(conn):
        assert requests.recall(conn, "task.comment", "r_1", "q") is None
        requests.remember(conn, NOW, "task.comment", "r_1", "q", {"id": 7, "body": "x"})
        requests.remember(conn, NOW, "task.comment", None, "q", {"id": 8})
    assert requests.recall(conn, "task.comment", "r_1", "q") == {"result": {"id": 7, "body": "x"}}
    assert requests.recall(conn, "task.comment", None, "q") == {"result": {"id": 8}}
    assert requests.recall(conn, "task.comment", "r_2", "q") is None
    with pytest.raises(RPCError) as ei:
        requests.recall(conn, "task.complete", "r_1", "q")
    assert ei.value.name == "invalid_params" and "task.comment" in ei.value.message
    with db.write(conn):
        requests.remember(conn, NOW + requests.KEEP + 1, "task.heartbeat", "r_1", "later", {})
    assert requests.recall(conn, "task.comment", "r_1", "q") is None
    assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 1


def test_a_rolled_back_write_forgets_its_answer(conn):
    with pytest.raises(RuntimeError):
        with db.write(conn):
            requests.remember(conn, NOW, "task.complete", "r_1", "q", {"tasks": []})
            raise RuntimeError("the handler's transaction failed")
    assert requests.recall(conn, "task.complete", "r_1", "q") is None


@pytest.mark.parametrize("raw,seconds", [("", 120.0), ("30", 30.0), ("1.5", 1.5), ("90s", 90.0), ("5m", 300.0),
                                         ("1h", 3600.0), ("0", 0.0)])
def test_retry_for_from_env(raw, seconds):
    assert rpc.retry_for_from_env({"KANBAN_RETRY_FOR": raw} if raw else {}) == seconds


@pytest.mark.parametrize("raw", ["soon", "-1", "nan", "inf", "5d", "m"])
def test_retry_for_from_env_refuses_nonsense(raw):
    with pytest.raises(ValueError, match="KANBAN_RETRY_FOR"):
        rpc.retry_for_from_env({"KANBAN_RETRY_FOR": raw})
