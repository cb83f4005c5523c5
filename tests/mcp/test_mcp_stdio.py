"""`agentstate mcp` over stdio, driven by the SDK's own client: every tool, the resources, and bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import anyio

from replica import Replica

from .helpers import call, fails, mcp_session, text

TOOLS = {
    "task_create", "task_get", "task_list", "task_update", "task_delete", "task_claim", "task_renew",
    "task_release", "task_complete", "task_next", "node_add", "node_get", "node_update", "node_remove",
    "edge_add", "edge_update", "edge_remove", "graph_neighbours", "graph_traverse", "graph_search",
    "counter_incr", "counter_decr", "counter_get", "lesson_append", "lesson_list", "lesson_search",
    "guard_record_read", "guard_verify", "guard_clear", "conflict_list", "conflict_show", "conflict_resolve",
    "status", "presence_set",
}
TIMEOUT = 120


def conflicted_directory(tmp_path: Path) -> Path:
    """A directory holding one open task conflict: two replicas set T-shared's owner concurrently, then merged."""
    a, b = tmp_path / "a", tmp_path / "b"
    with Replica.open(a) as first, Replica.open(b) as second:
        first.tasks.create("shared work", id="T-shared")
        second.apply_update(first.diff(None))
        first.tasks.update("T-shared", owner="agent-1")
        second.tasks.update("T-shared", owner="agent-2")
        first.apply_update(second.diff(None))
    return a


async def test_every_tool_and_resource(tmp_path: Path) -> None:
    data = conflicted_directory(tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with mcp_session(data, "--agent", "agent-a") as s:
            listed = {t.name: t for t in (await s.list_tools()).tools}
            assert set(listed) == TOOLS
            for tool in listed.values():
                assert tool.input_schema["type"] == "object" and tool.output_schema is not None, tool.name
                assert tool.description
            assert listed["task_create"].input_schema["properties"]["priority"]["enum"] == [
                "low", "medium", "high", "critical"]

            # tasks
            first = await call(s, "task_create", {"title": "Write the migration", "priority": "high",
                                                  "tags": ["db"], "properties": {"estimate": 3}})
            second = await call(s, "task_create", {"title": "Ship it", "depends_on": [first["id"]], "id": "T-ship",
                                                   "priority": "high"})
            assert first["priority"] == "high" and second["depends_on"] == [first["id"]]
            assert (await call(s, "task_get", {"id": first["id"][:-4]}))["title"] == "Write the migration"
            assert [t["id"] for t in (await call(s, "task_list", {"tag": "db"}))["tasks"]] == [first["id"]]
            oldest = await s.call_tool("task_list", {"status": "pending", "limit": 1})
            assert [t["id"] for t in oldest.structured_content["tasks"]] == ["T-shared"]
            assert json.loads(text(oldest)) == oldest.structured_content, "the text block is the same answer"
            everything = await call(s, "task_list", {})
            assert [(t["id"], t["open_conflicts"]) for t in everything["tasks"]] == [
                ("T-shared", 1), (first["id"], 0), ("T-ship", 0)]
            assert "limit" in (await fails(s, "task_list", {"limit": 0}))
            updated = await call(s, "task_update", {"id": "T-ship", "description": "after the migration",
                                                    "add_tags": ["release"]})
            assert updated["description"] == "after the migration" and updated["tags"] == ["release"]
            nxt = await call(s, "task_next", {})
            assert nxt["task"]["id"] == first["id"]
            won = await call(s, "task_claim", {"id": first["id"], "ttl": 60})
            assert won["state"] == "won" and won["agent"] == "agent-a" and won["epoch"] == 1
            renewed = await call(s, "task_renew", {"id": first["id"], "epoch": 1, "ttl": 120})
            assert renewed["state"] == "renewed" and renewed["expires"] > won["expires"]
            fenced = await call(s, "task_update", {"id": first["id"], "owner": "agent-a", "epoch": 1})
            assert fenced["owner"] == "agent-a"
            assert (await call(s, "task_release", {"id": first["id"], "epoch": 1}))["state"] == "released"
            claimed = await call(s, "task_next", {"claim": True, "agent": "agent-b"})
            assert claimed["task"]["id"] == first["id"]
            assert claimed["claim"]["state"] == "won" and claimed["claim"]["epoch"] == 2
            done = await call(s, "task_complete", {"id": first["id"], "epoch": 2, "agent": "agent-b"})
            assert done["state"] == "completed"
            assert (await call(s, "task_get", {"id": first["id"]}))["status"] == "completed"
            assert (await call(s, "task_next", {}))["task"]["id"] == "T-ship"
            assert (await call(s, "task_delete", {"id": "T-ship"}))["deleted"] == "T-ship"

            # graph
            await call(s, "node_add", {"id": "q1", "type": "question", "content": "Why is sync slow?"})
            await call(s, "node_add", {"id": "h1", "type": "hypothesis", "content": "Delete sets are resent"})
            await call(s, "node_add", {"id": "e1", "type": "evidence", "content": "Profile shows resends"})
            assert (await call(s, "node_get", {"id": "q1"}))["content"] == "Why is sync slow?"
            node = await call(s, "node_update", {"id": "h1", "properties": {"confidence": 0.7}})
            assert node["properties"] == {"confidence": 0.7}
            await call(s, "edge_add", {"source": "h1", "target": "q1", "type": "answers", "weight": 0.8})
            await call(s, "edge_add", {"source": "e1", "target": "h1", "type": "supports"})
            edge = await call(s, "edge_update", {"source": "h1", "target": "q1", "type": "answers", "weight": 0.9})
            assert edge["weight"] == 0.9
            near = await call(s, "graph_neighbours", {"id": "q1"})
            assert [n["id"] for n in near["nodes"]] == ["h1"] and len(near["edges"]) == 1
            walk = await call(s, "graph_traverse", {"start": "q1", "max_depth": 2})
            assert {n["id"]: n["depth"] for n in walk["nodes"]} == {"q1": 0, "h1": 1, "e1": 2}
            assert len((await call(s, "graph_traverse", {"start": "q1", "max_depth": 2, "max_nodes": 2}))["nodes"]) == 2
            found = await call(s, "graph_search", {"query": "SYNC slow"})
            assert [n["id"] for n in found["nodes"]] == ["q1"]
            assert [n["id"] for n in (await call(s, "graph_search", {"query": "s", "type": "evidence"}))["nodes"]] == ["e1"]
            await call(s, "edge_remove", {"source": "e1", "target": "h1", "type": "supports"})
            assert (await call(s, "node_remove", {"id": "e1"}))["deleted"] == "e1"

            # counters and lessons
            assert (await call(s, "counter_incr", {"name": "tokens", "by": 5}))["value"] == 5
            assert (await call(s, "counter_decr", {"name": "tokens", "by": 2}))["value"] == 3
            assert (await call(s, "counter_get", {"name": "tokens"}))["value"] == 3
            await call(s, "lesson_append", {"context": "sync", "failure": "timeouts on big docs",
                                            "resolution": "split updates"})
            await call(s, "lesson_append", {"context": "tests", "failure": "flaky sleep", "resolution": "wait for state"})
            lessons = (await call(s, "lesson_list", {}))["lessons"]
            assert [x["context"] for x in lessons] == ["sync", "tests"] and lessons[0]["author"] == "agent-a"
            assert [x["context"] for x in (await call(s, "lesson_list", {"limit": 1}))["lessons"]] == ["tests"]
            assert [x["context"] for x in (await call(s, "lesson_search", {"query": "split"}))["lessons"]] == ["sync"]

            # hash guard
            target = tmp_path / "notes.txt"
            target.write_text("first\n")
            recorded = await call(s, "guard_record_read", {"file_path": str(target), "turn_id": "t1"})
            assert recorded["agent"] == "agent-a"
            assert (await call(s, "guard_verify", {"file_path": str(target)}))["ok"] is True
            target.write_text("changed by someone else\n")
            stale = await s.call_tool("guard_verify", {"file_path": str(target)})
            assert stale.is_error and "STALE_FILE" in text(stale) and stale.structured_content["ok"] is False
            await call(s, "guard_record_read", {"file_path": str(target), "content": "changed by someone else\n"})
            assert (await call(s, "guard_verify", {"file_path": str(target)}))["ok"] is True
            assert (await call(s, "guard_clear", {"file_path": str(target)}))["cleared"] is True

            # conflicts
            conflicts = (await call(s, "conflict_list", {}))["conflicts"]
            assert [c["entity_id"] for c in conflicts] == ["T-shared"]
            shown = await call(s, "conflict_show", {"id": conflicts[0]["conflict_id"]})
            assert shown["conflict_fields"] == ["owner"] and shown["current"]["id"] == "T-shared"
            settled = await call(s, "conflict_resolve", {"id": conflicts[0]["conflict_id"], "strategy": "merge",
                                                         "values": {"owner": "agent-3"}})
            assert settled["entity"]["owner"] == "agent-3"
            assert (await call(s, "conflict_list", {}))["conflicts"] == []
            assert len((await call(s, "conflict_list", {"include_settled": True}))["conflicts"]) == 1

            # status and presence
            await call(s, "presence_set", {"working_on": "reviewing the migration"})
            status = await call(s, "status", {})
            assert status["replica"]["tasks"] == 2 and status["agent"] == "agent-a"
            assert [(p["agent"], p["working_on"]) for p in status["presence"]] == [("agent-a", "reviewing the migration")]

            # resources
            resources = {str(r.uri) for r in (await s.list_resources()).resources}
            assert {"agentstate://board", "agentstate://graph"} <= resources
            board = json.loads((await s.read_resource("agentstate://board")).contents[0].text)  # type: ignore[union-attr]
            assert {t["id"] for t in board["tasks"]} == {first["id"], "T-shared"}
            graph = json.loads((await s.read_resource("agentstate://graph")).contents[0].text)  # type: ignore[union-attr]
            assert {n["id"] for n in graph["nodes"]} == {"q1", "h1"} and len(graph["edges"]) == 1
            one = json.loads((await s.read_resource("agentstate://task/T-shared")).contents[0].text)  # type: ignore[union-attr]
            assert one["owner"] == "agent-3"
    with Replica.open(data) as replica:
        assert replica.counters.get("tokens") == 3 and replica.graph.has_node("q1")


def nested(depth: int) -> dict[str, object]:
    """An object nested `depth` levels deep."""
    value: dict[str, object] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_bad_arguments_are_tool_errors_and_the_server_survives(tmp_path: Path) -> None:
    errors = tmp_path / "server-stderr.txt"
    data = tmp_path / "data"
    with anyio.fail_after(TIMEOUT), open(errors, "w") as errlog:
        from mcp import ClientSession, stdio_client

        from .helpers import server_params

        async with stdio_client(server_params(data, "--agent", "a1"), errlog=errlog) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                task = await call(s, "task_create", {"title": "contested"})
                await call(s, "node_add", {"id": "n1", "type": "note"})
                cases = [
                    ("task_get", {"id": "T-missing"}, "not found: task 'T-missing' not found"),
                    ("task_get", {}, "id"),
                    ("task_create", {"title": ""}, "invalid argument: task field 'title'"),
                    ("task_create", {"title": 123}, "title"),
                    ("task_create", {"title": "x", "status": "done"}, "status"),
                    ("task_create", {"title": "x", "id": task["id"]}, "conflict: task"),
                    ("task_create", {"title": "x", "properties": {"big": 2**60}}, "properties"),
                    ("task_update", {"id": task["id"], "status": "nope"}, "status"),
                    ("task_claim", {"id": task["id"], "ttl": 0}, "ttl"),
                    ("task_renew", {"id": task["id"], "epoch": 5}, "stale claim epoch"),
                    ("task_complete", {"id": task["id"], "epoch": 1}, "stale claim epoch"),
                    ("node_add", {"id": "n1", "type": "note"}, "conflict: node 'n1' already exists"),
                    ("node_add", {"id": "bad id|x", "type": "note"}, "invalid argument"),
                    ("edge_add", {"source": "n1", "target": "ghost", "type": "refers"}, "does not exist"),
                    ("edge_update", {"source": "n1", "target": "n1", "type": "refers"}, "not found"),
                    ("graph_traverse", {"start": "n1", "max_depth": 99}, "max_depth"),
                    ("graph_search", {"query": ""}, "query"),
                    ("counter_incr", {"name": "c", "by": -1}, "by"),
                    ("counter_incr", {"name": "bad|name"}, "invalid argument"),
                    ("lesson_append", {"context": "", "failure": "f", "resolution": "r"}, "context"),
                    ("conflict_show", {"id": "C-0000000000000000"}, "not found"),
                    ("conflict_resolve", {"id": "C-0000000000000000", "strategy": "sideways"}, "strategy"),
                    ("guard_verify", {"file_path": ""}, "file_path"),
                    ("guard_record_read", {"file_path": str(tmp_path / "absent.txt")}, "cannot read"),
                    ("no_such_tool", {}, "Unknown tool"),
                    ("task_create", {"title": "x", "properties": nested(64)}, "nested deeper than 32"),
                    ("task_create", {"title": "x", "description": "y" * (2 << 20)}, "larger than 1048576 bytes"),
                    ("task_create", {"title": "x", "tags": ["t"] * 200_000}, "more than 100000 values"),
                ]
                for tool, arguments, expected in cases:
                    message = await fails(s, tool, arguments)
                    assert expected in message, (tool, arguments, message)
                await call(s, "task_claim", {"id": task["id"], "agent": "a2"})
                lost = await s.call_tool("task_claim", {"id": task["id"]})
                assert lost.is_error and "lost claim" in text(lost) and "held by a2 at epoch 1" in text(lost)
                assert lost.structured_content["state"] == "lost"
                stale = await fails(s, "task_update", {"id": task["id"], "title": "mine", "epoch": 1})
                assert "stale claim epoch" in stale
                assert (await call(s, "task_get", {"id": task["id"]}))["title"] == "contested"
                assert (await call(s, "status", {}))["replica"]["tasks"] == 1
    log = errors.read_text()
    assert "Traceback" not in log, log


async def test_a_closed_stdin_ends_the_server_and_the_directory_reopens(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with anyio.fail_after(TIMEOUT):
        async with mcp_session(data) as s:
            await call(s, "task_create", {"title": "before exit"})
    with Replica.open(data) as replica:
        assert [t.title for t in replica.tasks.list()] == ["before exit"]
