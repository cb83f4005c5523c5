"""`agentstate mcp`: the replica's operations as MCP tools and resources, on the official Python SDK.

One server per agent: each opens the data directory like any other process (any number may
share it) and runs every tool through the command registry (`execute`), the same code the
CLI and the daemon run. Tool arguments are typed signatures, so each tool has a JSON schema;
results are structured. Every failure a caller can cause comes back as a tool result with
`isError` and a message saying what was wrong; the server itself keeps running.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from ..replica import Replica

log = logging.getLogger(__name__)

MAX_ARGUMENT_BYTES = 1 << 20
"""A tool call's arguments larger than this (as JSON) are refused before the tool runs."""
MAX_ARGUMENT_DEPTH = 32
"""Arguments nested deeper than this (objects and arrays) are refused before the tool runs."""
MAX_ARGUMENT_ITEMS = 100_000
"""Arguments holding more values than this are refused before the tool runs."""
SERVER_NAME = "agentstate"
TaskStatusName = Literal["pending", "in_progress", "blocked", "completed", "cancelled"]
PriorityName = Literal["low", "medium", "high", "critical"]
Direction = Literal["out", "in", "both"]
Strategy = Literal["ours", "theirs", "merge"]
Result = dict[str, Any]
TaskId = Annotated[str, Field(description="task id, or a unique prefix of 8+ characters", max_length=200)]
AgentName = Annotated[str | None, Field(description="who acts (default: this server's --agent)", max_length=200)]
Ttl = Annotated[float, Field(description="lease length in seconds (1 s to 7 days)", ge=1, le=7 * 24 * 3600)]
By = Annotated[int, Field(ge=1, le=2**53, description="a positive amount")]
Properties = Annotated[dict[str, Any] | None, Field(description="free-form JSON properties to set, key by key")]

_CATEGORIES = {
    "NotFoundError": "not found",
    "AlreadyExistsError": "conflict",
    "StaleClaimError": "stale claim epoch",
    "ConflictError": "conflict",
    "FieldError": "invalid argument",
    "ValidationError": "invalid argument",
    "InvalidRecordError": "invalid stored record",
    "DiskFullError": "disk full",
    "StorageError": "data directory problem",
    "ClosedError": "replica closed",
}


class ArgumentLimitError(ValueError):
    """A tool call's arguments are too large or too deeply nested to be accepted."""


def check_arguments(arguments: Any) -> None:
    """Refuse arguments nested deeper than MAX_ARGUMENT_DEPTH, holding more than MAX_ARGUMENT_ITEMS
    values, or larger than MAX_ARGUMENT_BYTES as JSON (a walk with its own stack, never recursion)."""
    stack: list[tuple[Any, int]] = [(arguments, 0)]
    items = 0
    size = 0
    while stack:
        value, depth = stack.pop()
        items += 1
        if items > MAX_ARGUMENT_ITEMS:
            raise ArgumentLimitError(f"arguments hold more than {MAX_ARGUMENT_ITEMS} values; send less at once")
        if isinstance(value, dict):
            if depth >= MAX_ARGUMENT_DEPTH:
                raise ArgumentLimitError(f"arguments are nested deeper than {MAX_ARGUMENT_DEPTH} levels")
            for key, inner in value.items():
                size += len(str(key)) + 4
                stack.append((inner, depth + 1))
        elif isinstance(value, list):
            if depth >= MAX_ARGUMENT_DEPTH:
                raise ArgumentLimitError(f"arguments are nested deeper than {MAX_ARGUMENT_DEPTH} levels")
            stack.extend((inner, depth + 1) for inner in value)
        elif isinstance(value, str):
            size += len(value) + 2
        else:
            size += 8
        if size > MAX_ARGUMENT_BYTES:
            raise ArgumentLimitError(f"arguments are larger than {MAX_ARGUMENT_BYTES} bytes")


def describe_error(exc: BaseException) -> str:
    """A one-line message for a failed tool: what kind of failure, then the error's own words."""
    names = [cls.__name__ for cls in type(exc).__mro__]
    category = next((_CATEGORIES[n] for n in names if n in _CATEGORIES), None)
    if category is None:
        category = "invalid argument" if isinstance(exc, (ValueError, TypeError)) else "error"
    text = str(exc) or type(exc).__name__
    return f"{category}: {text}"


@dataclass
class Context:
    """What the tools share: the replica, this server's agent name, and the services beside it."""

    replica: Replica
    agent: str
    services: list[Any] = field(default_factory=list)
    guard_state: dict[str, Any] = field(default_factory=dict)

    def who(self, agent: str | None) -> str:
        """The agent a call acts for: the one given, else this server's."""
        return agent if agent else self.agent


def _execute(ctx: Context, name: str, params: dict[str, Any]) -> Any:
    from . import commands

    return commands.execute(ctx.replica, name, params)


def _reply(result: Result) -> Any:
    """A successful tool result: the structured answer, and the same as compact JSON text.

    Built here rather than by the SDK, which would re-serialise a large answer (1,000 tasks)
    through pydantic once more and indent its text copy."""
    from mcp.types import CallToolResult, TextContent

    text = json.dumps(result, separators=(",", ":"), default=str)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=result)


def _reply_text(text: str) -> Any:
    """A successful tool result from a result's JSON text (a listing the replica encoded): the text as is,
    and its decoding as the structured copy (cheaper than encoding the decoded result again)."""
    from mcp.types import CallToolResult, TextContent

    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=json.loads(text))


def _tool_error(message: str, structured: Result | None = None) -> Any:
    """A tool result flagged isError that still carries the structured answer (a lost claim, a stale file)."""
    from mcp.types import CallToolResult, TextContent

    return CallToolResult(content=[TextContent(type="text", text=message)], structured_content=structured,
                          is_error=True)


@contextmanager
def _tool_errors() -> Iterator[None]:
    """Turn every failure inside a tool into a ToolError (isError result with a clear message)."""
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        yield
    except ToolError:
        raise
    except Exception as exc:
        message = describe_error(exc)
        if message.startswith("error:"):
            log.exception("tool failed unexpectedly")
        raise ToolError(message) from exc


def _given(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _claim_answer(result: Result) -> Any:
    """A claim result; a lost claim is an error result that names the holder and until when."""
    if result.get("state") != "lost":
        return _reply(result)
    holder = result.get("holder") or {}
    import time

    left = max(0.0, float(holder.get("expires") or 0) - time.time())
    message = (f"lost claim: task {result['task_id']} is held by {holder.get('agent')} at epoch "
               f"{holder.get('epoch')} for {left:.0f} more seconds; pick another task (task_next)")
    return _tool_error(message, result)


def build_server(ctx: Context) -> MCPServer:
    """An MCPServer whose tools and resources act on `ctx.replica`."""
    from mcp.server.mcpserver import MCPServer

    from . import compat_commands, guard_commands  # noqa: F401  (they register their commands)

    server: MCPServer = MCPServer(SERVER_NAME, version=_version(), log_level="WARNING",
                                  instructions="Shared task board, graph of thought, counters and lessons "
                                               "of a team of agents (CRDT-replicated). Claim a task before "
                                               "working on it (task_claim / task_next with claim=true); pass "
                                               "the epoch you got to task_update and task_complete.")
    server.middleware.append(_limit_arguments)
    _task_tools(server, ctx)
    _graph_tools(server, ctx)
    _small_tools(server, ctx)
    _guard_and_conflict_tools(server, ctx)
    _resources(server, ctx)
    return server


async def _limit_arguments(request: Any, call_next: Callable[[Any], Any]) -> Any:
    """Refuse oversized or deeply nested tool arguments with an error result, before validation."""
    if request.method == "tools/call" and isinstance(request.params, dict):
        try:
            check_arguments(request.params.get("arguments") or {})
        except ArgumentLimitError as exc:
            from mcp.types import CallToolResult, TextContent

            name = str(request.params.get("name", ""))[:100]
            return CallToolResult(content=[TextContent(type="text", text=f"refused {name}: {exc}")], is_error=True)
    return await call_next(request)


def _task_tools(server: MCPServer, ctx: Context) -> None:
    @server.tool()
    def task_create(
        title: Annotated[str, Field(description="what to do (1-1000 characters)")],
        description: str = "",
        status: TaskStatusName = "pending",
        priority: PriorityName = "medium",
        owner: str | None = None,
        tags: list[str] | None = None,
        depends_on: Annotated[list[str] | None, Field(description="ids of tasks that must complete first")] = None,
        properties: Properties = None,
        id: Annotated[str | None, Field(description="choose the id (default: generated T-...)")] = None,
    ) -> Result:
        """Create a task on the shared board; returns it with its id."""
        with _tool_errors():
            return _reply(_execute(ctx, "task.add", _given(
                title=title, description=description, status=status, priority=priority, owner=owner,
                tags=tags, depends_on=depends_on, properties=properties, id=id)))

    @server.tool()
    def task_get(id: TaskId) -> Result:
        """One task with its open conflicts and last writers."""
        with _tool_errors():
            return _reply(_execute(ctx, "task.show", {"id": id}))

    @server.tool()
    def task_list(
        status: TaskStatusName | None = None,
        owner: str | None = None,
        tag: str | None = None,
        limit: Annotated[int | None, Field(description="at most this many (oldest first)", ge=1)] = None,
    ) -> Result:
        """Tasks matching every filter given, oldest first (`limit`: only the oldest N of them)."""
        with _tool_errors():
            return _reply_text(_execute(ctx, "task.list.json", _given(status=status, owner=owner, tag=tag,
                                                                       limit=limit)))

    @server.tool()
    def task_update(
        id: TaskId,
        title: str | None = None,
        description: str | None = None,
        status: TaskStatusName | None = None,
        priority: PriorityName | None = None,
        owner: str | None = None,
        tags: Annotated[list[str] | None, Field(description="replace the whole tag set")] = None,
        add_tags: list[str] | None = None,
        remove_tags: list[str] | None = None,
        depends_on: Annotated[list[str] | None, Field(description="replace the dependency set")] = None,
        properties: Properties = None,
        remove_properties: list[str] | None = None,
        epoch: Annotated[int | None, Field(description="your claim's epoch: the write is refused unless "
                                                       "you still hold the claim")] = None,
        agent: AgentName = None,
    ) -> Result:
        """Change some fields of a task (others' edits of other fields survive); fenced by a claim epoch if given."""
        with _tool_errors():
            params = _given(id=id, title=title, description=description, status=status, priority=priority,
                            owner=owner, tags=tags, add_tags=add_tags, remove_tags=remove_tags,
                            depends_on=depends_on, properties=properties, remove_properties=remove_properties)
            if epoch is None:
                return _reply(_execute(ctx, "task.update", params))
            with ctx.replica.transaction():
                from . import commands

                task_id = commands.resolve_task_id(ctx.replica, id)
                ctx.replica.claims.check_fence(task_id, ctx.who(agent), epoch)
                return _reply(_execute(ctx, "task.update", {**params, "id": task_id}))

    @server.tool()
    def task_delete(id: TaskId) -> Result:
        """Delete a task."""
        with _tool_errors():
            return _reply(_execute(ctx, "task.rm", {"id": id}))

    @server.tool()
    def task_claim(id: TaskId, agent: AgentName = None, ttl: Ttl = 900.0) -> Result:
        """Claim a task: won (with a fencing epoch and lease expiry) or an error naming who holds it."""
        with _tool_errors():
            result = _execute(ctx, "task.claim", {"id": id, "agent": ctx.who(agent), "ttl": ttl})
        return _claim_answer(result)

    @server.tool()
    def task_renew(id: TaskId, epoch: int, agent: AgentName = None, ttl: Ttl = 900.0) -> Result:
        """Extend your lease on a task; refused if your epoch is no longer the live claim."""
        with _tool_errors():
            return _reply(_execute(ctx, "task.renew", {"id": id, "agent": ctx.who(agent), "epoch": epoch, "ttl": ttl}))

    @server.tool()
    def task_release(id: TaskId, epoch: int, agent: AgentName = None) -> Result:
        """Give a claimed task back (others may claim it at once)."""
        with _tool_errors():
            return _reply(_execute(ctx, "task.release", {"id": id, "agent": ctx.who(agent), "epoch": epoch}))

    @server.tool()
    def task_complete(id: TaskId, epoch: int, agent: AgentName = None) -> Result:
        """Mark a claimed task completed and end the lease, fenced by your epoch."""
        with _tool_errors():
            return _reply(_execute(ctx, "task.complete", {"id": id, "agent": ctx.who(agent), "epoch": epoch}))

    @server.tool()
    def task_next(
        agent: AgentName = None,
        claim: Annotated[bool, Field(description="also claim it (retried on the next task if lost)")] = False,
        ttl: Ttl = 900.0,
    ) -> Result:
        """The highest-priority pending task whose dependencies are completed and that nobody holds."""
        who = ctx.who(agent)
        with _tool_errors():
            for _ in range(8):
                found = _execute(ctx, "task.next", {"agent": who})
                if not claim or found["task"] is None:
                    return _reply(found)
                claimed = _execute(ctx, "task.claim", {"id": found["task"]["id"], "agent": who, "ttl": ttl})
                if claimed["state"] != "lost":
                    return _reply({**found, "claim": claimed})
            return _reply({"task": None, "claim": None})


def _graph_tools(server: MCPServer, ctx: Context) -> None:
    @server.tool()
    def node_add(id: str, type: Annotated[str, Field(description="e.g. question, hypothesis, decision")],
                 content: str = "", properties: Properties = None) -> Result:
        """Add a node to the graph of thought (its id must be new)."""
        with _tool_errors():
            return _reply(_execute(ctx, "graph.node.add", _given(id=id, type=type, content=content, properties=properties)))

    @server.tool()
    def node_get(id: str) -> Result:
        """One node."""
        with _tool_errors():
            return _reply(ctx.replica.graph.get_node(id).model_dump(mode="json"))

    @server.tool()
    def node_update(id: str, type: str | None = None, content: str | None = None, properties: Properties = None,
                    remove_properties: list[str] | None = None) -> Result:
        """Change some fields of a node (properties key by key)."""
        with _tool_errors():
            return _reply(_execute(ctx, "graph.node.update", _given(id=id, type=type, content=content,
                                                             properties=properties,
                                                             remove_properties=remove_properties)))

    @server.tool()
    def node_remove(id: str) -> Result:
        """Remove a node and every edge touching it."""
        with _tool_errors():
            return _reply(_execute(ctx, "graph.node.rm", {"id": id}))

    @server.tool()
    def edge_add(source: str, target: str, type: str, weight: float = 1.0, properties: Properties = None) -> Result:
        """Add the edge source -type-> target (both nodes must exist); re-adding re-weights it."""
        with _tool_errors():
            return _reply(_execute(ctx, "graph.edge.add", _given(source=source, target=target, type=type, weight=weight,
                                                          properties=properties)))

    @server.tool()
    def edge_update(source: str, target: str, type: str, weight: float | None = None,
                    properties: Properties = None) -> Result:
        """Change an existing edge's weight or properties."""
        with _tool_errors():
            return _reply(_execute(ctx, "graph.edge.update", _given(source=source, target=target, type=type,
                                                             weight=weight, properties=properties)))

    @server.tool()
    def edge_remove(source: str, target: str, type: str) -> Result:
        """Remove one edge."""
        with _tool_errors():
            return _reply(_execute(ctx, "graph.edge.rm", {"source": source, "target": target, "type": type}))

    @server.tool()
    def graph_neighbours(id: str, direction: Direction = "both", edge_type: str | None = None) -> Result:
        """Nodes one edge away from a node, and the edges that lead there."""
        with _tool_errors():
            return _reply(_execute(ctx, "graph.neighbours", _given(id=id, direction=direction, edge_type=edge_type)))

    @server.tool()
    def graph_traverse(
        start: str,
        max_depth: Annotated[int, Field(ge=0, le=20, description="how many edges away")] = 2,
        max_nodes: Annotated[int, Field(ge=1, le=10_000, description="at most this many nodes")] = 200,
        direction: Direction = "both",
    ) -> Result:
        """Breadth-first walk from a node, bounded in depth and count: nodes with their depth, edges among them."""
        with _tool_errors():
            return _reply(_execute(ctx, "graph.show", {"id": start, "depth": max_depth, "limit": max_nodes,
                                                "direction": direction}))

    @server.tool()
    def graph_search(
        query: Annotated[str, Field(min_length=1, max_length=1000, description="words that must all appear "
                                                                                "(case-insensitive)")],
        type: str | None = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 50,
    ) -> Result:
        """Nodes whose id, type, content or properties contain every word of the query."""
        with _tool_errors():
            return _reply(_execute(ctx, "graph.search", _given(query=query, type=type, limit=limit)))


def _small_tools(server: MCPServer, ctx: Context) -> None:
    @server.tool()
    def counter_incr(name: str, by: By = 1) -> Result:
        """Add to a counter (exact, replicated); returns its new value."""
        with _tool_errors():
            return _reply(_execute(ctx, "counter.incr", {"name": name, "by": by}))

    @server.tool()
    def counter_decr(name: str, by: By = 1) -> Result:
        """Subtract from a counter; returns its new value."""
        with _tool_errors():
            return _reply(_execute(ctx, "counter.decr", {"name": name, "by": by}))

    @server.tool()
    def counter_get(name: str) -> Result:
        """A counter's value (0 if never touched)."""
        with _tool_errors():
            return _reply(_execute(ctx, "counter.get", {"name": name}))

    @server.tool()
    def lesson_append(context: str, failure: str, resolution: str, author: str | None = None) -> Result:
        """Record what was learnt: the context, what failed, and what resolved it."""
        with _tool_errors():
            return _reply(_execute(ctx, "lesson.add", {"context": context, "failure": failure, "resolution": resolution,
                                                "author": author or ctx.agent}))

    @server.tool()
    def lesson_list(limit: Annotated[int | None, Field(ge=1, description="only the newest N")] = None) -> Result:
        """Every lesson, oldest first."""
        with _tool_errors():
            found = _execute(ctx, "lesson.list", {})
            if limit is not None:
                found["lessons"] = found["lessons"][-limit:]
            return _reply(found)

    @server.tool()
    def lesson_search(query: Annotated[str, Field(min_length=1, max_length=1000)],
                      limit: Annotated[int, Field(ge=1, le=1000)] = 20) -> Result:
        """Lessons whose context, failure or resolution contain every word of the query, newest first."""
        with _tool_errors():
            return _reply(_execute(ctx, "lesson.search", {"query": query, "limit": limit}))

    @server.tool()
    def status() -> Result:
        """This replica (counts, log position); when syncing, peers, how far behind each is, and who is online."""
        with _tool_errors():
            result = _execute(ctx, "status", {})
            result["agent"] = ctx.agent
            for service in ctx.services:
                result[service.name] = service.status()
            from .presence import local_presence

            result["presence"] = local_presence(ctx.replica)
            return _reply(result)

    @server.tool()
    def presence_set(working_on: Annotated[str, Field(max_length=1000, description="what you are doing now")],
                     agent: AgentName = None) -> Result:
        """Tell the others what you are doing (shown by `status`, and to peers when syncing)."""
        with _tool_errors():
            from .presence import set_presence

            state = set_presence(ctx.replica, ctx.who(agent), working_on)
            for service in ctx.services:
                command = getattr(service, "commands", {}).get("presence")
                if command is not None:
                    command({"fields": {"agent": ctx.who(agent), "working_on": working_on}})
            return _reply(state)


def _guard_and_conflict_tools(server: MCPServer, ctx: Context) -> None:
    @server.tool()
    def guard_record_read(
        file_path: Annotated[str, Field(description="the file read (absolute, or relative to the server's "
                                                    "working directory)")],
        content: Annotated[str | None, Field(description="what was read (default: the file as it is now)")] = None,
        turn_id: str = "",
        intent_id: str | None = None,
    ) -> Result:
        """Record the hash of a file you read, so that a write after someone else changed it is caught."""
        with _tool_errors():
            return _reply(_execute(ctx, "guard.record", _given(file_path=file_path, content=content, turn_id=turn_id,
                                                        intent_id=intent_id, agent=ctx.agent)))

    @server.tool()
    def guard_verify(file_path: str) -> Result:
        """Before writing a file: ok if it still has the content you read; an error (STALE_FILE) if it changed."""
        with _tool_errors():
            result = _execute(ctx, "guard.verify", {"file_path": file_path, "agent": ctx.agent})
        if not result["ok"]:
            return _tool_error(result["error"]["message"], result)
        return _reply(result)

    @server.tool()
    def guard_clear(file_path: str) -> Result:
        """After a successful write: forget your recorded read of the file."""
        with _tool_errors():
            return _reply(_execute(ctx, "guard.clear", {"file_path": file_path, "agent": ctx.agent}))

    @server.tool()
    def conflict_list(entity_id: str | None = None, include_settled: bool = False) -> Result:
        """Fields written concurrently on different replicas (tasks and compat entities)."""
        with _tool_errors():
            return _reply(_execute(ctx, "compat.conflicts.list", {"entity_id": entity_id, "all": include_settled}))

    @server.tool()
    def conflict_show(id: str) -> Result:
        """Both sides of one conflict and the record as it stands now."""
        with _tool_errors():
            return _reply(_execute(ctx, "compat.conflicts.show", {"id": id}))

    @server.tool()
    def conflict_resolve(id: str, strategy: Strategy,
                         values: Annotated[dict[str, Any] | None, Field(
                             description="field -> value overriding the chosen side")] = None) -> Result:
        """Settle a conflict with ours, theirs or merge (optionally overriding values); it replicates."""
        with _tool_errors():
            return _reply(_execute(ctx, "compat.conflicts.resolve", {"id": id, "strategy": strategy,
                                                              "values": values or {}}))


def _resources(server: MCPServer, ctx: Context) -> None:
    @server.resource("agentstate://board", name="board", mime_type="application/json",
                     description="Every task on the shared board (JSON)")
    def board() -> str:
        return str(_execute(ctx, "task.list.json", {}))

    @server.resource("agentstate://graph", name="graph", mime_type="application/json",
                     description="Every node and edge of the graph of thought (JSON)")
    def graph() -> str:
        nodes = _execute(ctx, "graph.node.list", {})["nodes"]
        edges = _execute(ctx, "graph.edge.list", {})
        return json.dumps({"nodes": nodes, **edges}, default=str)

    @server.resource("agentstate://task/{id}", name="task", mime_type="application/json",
                     description="One task (JSON)")
    def task(id: str) -> str:
        return json.dumps(_execute(ctx, "task.show", {"id": id}), default=str)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("agentstate")
    except Exception:
        return "0"


# ------------------------------------------------------------------------------ running


@dataclass
class HttpAddress:
    """Where `--http` listens."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        """True for 127.0.0.0/8, ::1 and localhost."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_http(text: str) -> HttpAddress:
    """HOST:PORT (IPv6 in brackets); ValueError saying what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--http {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8790")
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--http {text!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--http {text!r}: port must be 0-65535")
    return HttpAddress(host, number)


class BearerAuth:
    """ASGI middleware: every request must carry `Authorization: Bearer TOKEN` (compared in constant time)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = b""
            for key, value in scope.get("headers") or ():
                if key.lower() == b"authorization" and value[:7].lower() == b"bearer ":
                    given = value[7:].strip()
            if not hmac.compare_digest(given, self.token):
                body = b'{"error": "unauthorized: send Authorization: Bearer TOKEN (the --token of agentstate mcp)"}'
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b'Bearer realm="agentstate"'),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def default_agent() -> str:
    """$AGENTSTATE_AGENT, else mcp-<host>-<pid> (unique per server process)."""
    return os.environ.get("AGENTSTATE_AGENT") or f"mcp-{socket.gethostname()}-{os.getpid()}"


async def serve(path: Path, *, agent: str | None = None, durability: str = "balanced",
                http: str | None = None, token: str | None = None,
                sync_options: dict[str, Any] | None = None,
                ready: Callable[[str], None] | None = None) -> None:
    """Open the directory, start syncing if asked, and serve MCP on stdio (or streamable HTTP) until the end."""
    from compat.layout import upgrade_on_open

    from ..replica import Replica
    from ..services import start_services, stop_services

    address = parse_http(http) if http else None
    if address is not None and not address.loopback and not token:
        raise ValueError(f"--http {http}: listening beyond loopback needs --token (clients send it as "
                         "Authorization: Bearer TOKEN)")
    replica = Replica.open(path, durability=durability)
    services: list[Any] = []
    try:
        upgrade_on_open(replica)
        if sync_options:
            services = await start_services(replica, sync_options)
        ctx = Context(replica, agent or default_agent(), services)
        server = build_server(ctx)
        freeze_startup_heap()
        if address is None:
            if ready is not None:
                ready("stdio")
            await _serve_stdio(server)
        else:
            await _serve_http(server, address, token, ready)
    finally:
        await stop_services(services)
        replica.close()


def freeze_startup_heap() -> None:
    """Put what starting allocated (modules, pydantic schemas, the opened board) beyond the garbage collector.

    A long-lived server's full collections otherwise walk ~95,000 startup objects: in a trial, listing
    1,000 tasks paid 12 ms per call on average in them (one collection of about 90 ms every few calls);
    over stdio, task_list's p50 went from 121 to 111 ms."""
    import gc

    gc.collect()
    gc.freeze()


async def _serve_stdio(server: MCPServer) -> None:
    """Serve on stdin/stdout until the client closes stdin, or SIGTERM / SIGINT arrives."""
    import signal

    import anyio

    async with anyio.create_task_group() as group:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    group.cancel_scope.cancel()
                    return

        group.start_soon(stop_on_signal)
        await server.run_stdio_async()
        group.cancel_scope.cancel()


def _uvicorn_server() -> type:
    import uvicorn

    class Quiet(uvicorn.Server):
        """uvicorn, stopped by SIGTERM / SIGINT without re-raising the signal afterwards, so the replica closes."""

        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            import signal

            previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def _stop(self, sig: int, frame: Any) -> None:
            self.should_exit = True

    return Quiet


async def _serve_http(server: MCPServer, address: HttpAddress, token: str | None,
                      ready: Callable[[str], None] | None) -> None:
    import uvicorn

    quiet_server = _uvicorn_server()
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address.host, address.port))
    sock.listen(128)
    port = sock.getsockname()[1]
    from mcp.server.transport_security import TransportSecuritySettings

    security = None if address.loopback else TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app: Any = server.streamable_http_app(host=address.host, transport_security=security)
    if token:
        app = BearerAuth(app, token)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    host = f"[{address.host}]" if family == socket.AF_INET6 else address.host
    url = f"http://{host}:{port}/mcp"
    http_server = quiet_server(config)
    if ready is not None:
        ready(url)
    await http_server.serve(sockets=[sock])


def main_stdio(path: str) -> None:
    """Run on stdio from `python -m replica.app.mcp_server DIR` (tests and embedding)."""
    import anyio

    anyio.run(lambda: serve(Path(path)))


if __name__ == "__main__":
    main_stdio(sys.argv[1])
