"""The claim arbiter over websockets: the server a `serve --arbiter` mesh answers claims with, and the claimant's client.

A claimant opens a websocket to the arbiter's room URL with the header
`X-Agentstate-Claim: 1` and its bearer token, sends a request frame and reads one
response frame (`transport.claim_protocol`), one request at a time; it keeps the websocket
for its next requests for a while (a new handshake per claim would cost most of its latency). The arbiter decides on its replica, under the
log's append lock (`Claims.decide_claim` / `decide_fenced`), and answers with the result and
the update that wrote it; the claimant applies the update at once, peers get it by sync.
The rules are in docs/protocol.md, "Claim arbiter".
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections import OrderedDict
from contextlib import suppress
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect as sync_connect

from replica.claims import Arbiter, ArbiterAnswer, ArbiterCall, ClaimResult, StaleClaimError
from replica.errors import ClosedError, FieldError, NotFoundError, ReplicaError
from replica.replica import Replica
from transport.auth import Access
from transport.claim_protocol import (
    CLAIM_HEADER,
    MAX_RESPONSE_BYTES,
    ClaimProtocolError,
    ClaimRequest,
    ClaimResponse,
    ErrorKind,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    error_response,
)

log = logging.getLogger(__name__)

REQUEST_WAIT = 5.0
"""Seconds the arbiter waits for a claimant's first request frame after the websocket opened."""
IDLE_WAIT = 30.0
"""Seconds the arbiter keeps a claimant's websocket open for its next request."""
CLIENT_IDLE = 20.0
"""Seconds a claimant reuses an idle websocket (below IDLE_WAIT, so the arbiter never closes it first)."""
POOL_SIZE = 4
"""Idle websockets a claimant keeps per arbiter URL (one request at a time on each)."""
DEFAULT_TIMEOUT = 2.0
"""Seconds a claimant gives the arbiter (connect, decide, answer) before claiming here as tentative."""
NOT_FOUND_RETRY = 0.02
"""First pause before asking again when the arbiter has not yet received the task by sync (doubles)."""
REMEMBERED_UPDATES = 4096
"""Recent answers' update bytes kept by request id, so a retried request gets its update again."""


class ArbiterServer:
    """Answers claim requests on a mesh's port for one replica and room (one request per websocket)."""

    def __init__(self, replica: Replica, room: str) -> None:
        self.replica = replica
        self.room = room
        self.counts: dict[str, int] = {}
        self._capture = threading.local()
        self._updates: OrderedDict[str, bytes] = OrderedDict()
        self._updates_lock = threading.Lock()
        self._open: set[ServerConnection] = set()
        self._closing = False
        self._unsubscribe = replica.on_update(self._on_update)

    async def shutdown(self) -> None:
        """Close every claimant's websocket with 1001 and refuse new ones (before the mesh stops)."""
        self._closing = True
        await asyncio.gather(*(ws.close(1001, "going away") for ws in list(self._open)), return_exceptions=True)

    def close(self) -> None:
        """Stop watching the replica's updates."""
        self._unsubscribe()

    def _on_update(self, update: bytes, origin: str | None) -> None:
        """Replica listener: keep the local updates a decision in this thread writes."""
        box: list[bytes] | None = getattr(self._capture, "updates", None)
        if box is not None and origin is None:
            box.append(update)

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def handle(self, ws: ServerConnection, access: Access, room_ok: bool) -> None:
        """Serve one claim websocket: answer request frames one at a time until it closes or idles.

        A refused claimant's first frame is read (and dropped) before the refusal, so that
        the answer never races the claimant's send; a refusal or a malformed frame closes it."""
        remote = str(ws.remote_address)
        refusal: ClaimResponse | None = None
        if not access.allowed:
            refusal = error_response("", "unauthorized", f"token refused: {access.reason}")
        elif access.read_only:
            refusal = error_response("", "forbidden", "a read-only token cannot claim")
        elif not room_ok:
            refusal = error_response("", "room", f"this arbiter decides claims of room {self.room!r} only")
        if self._closing:
            await ws.close(1001, "going away")
            return
        self._open.add(ws)
        try:
            await self._serve(ws, refusal, remote)
        finally:
            self._open.discard(ws)

    async def _serve(self, ws: ServerConnection, refusal: ClaimResponse | None, remote: str) -> None:
        """The request loop of `handle`."""
        wait = REQUEST_WAIT
        while not self._closing:
            try:
                frame = await asyncio.wait_for(ws.recv(), wait)
            except (TimeoutError, ConnectionClosed):
                with suppress(Exception):
                    await ws.close()
                return
            wait = IDLE_WAIT
            if refusal is not None:
                await self._answer(ws, refusal, remote, close=True)
                return
            try:
                request = decode_request(frame)
            except ClaimProtocolError as error:
                await self._answer(ws, error_response("", error.kind, str(error)), remote, close=True)
                return
            response = await asyncio.to_thread(self.decide, request)
            if not await self._answer(ws, response, remote, close=False):
                return
        with suppress(Exception):
            await ws.close(1001, "going away")

    async def _answer(self, ws: ServerConnection, response: ClaimResponse, remote: str, *, close: bool) -> bool:
        """Send an answer (closing after it if asked); a refusal is logged and counted. False once closed."""
        if response.error is not None and response.error.kind not in ("not_found", "stale"):
            self._count(response.error.kind)
            log.warning("event=claim_refused peer=%s kind=%s detail=%s", remote, response.error.kind,
                        response.error.message[:200])
        try:
            await ws.send(encode_response(response))
            if close:
                await ws.close()
        except ConnectionClosed:
            return False
        return not close

    def decide(self, request: ClaimRequest) -> ClaimResponse:
        """Decide a request on the replica (blocking: run it off the event loop)."""
        self._capture.updates = captured = []
        try:
            result = self._run(request)
        except NotFoundError as error:
            return error_response(request.rid, "not_found", str(error))
        except StaleClaimError as error:
            lost = ClaimResult("lost", request.task, request.agent, None, None, error.current)
            return error_response(request.rid, "stale", str(error), lost.as_dict())
        except FieldError as error:
            return error_response(request.rid, "invalid", str(error))
        except ClosedError as error:
            return error_response(request.rid, "internal", f"the arbiter is shutting down: {error}")
        except ReplicaError as error:
            log.exception("event=claim_failed task=%s", request.task)
            return error_response(request.rid, "internal", str(error))
        finally:
            self._capture.updates = None
        self._count(f"{request.op}_{result.state}")
        with self._updates_lock:
            if captured:
                update = captured[0] if len(captured) == 1 else _merge(captured)
                self._updates[request.rid] = update
                if len(self._updates) > REMEMBERED_UPDATES:
                    self._updates.popitem(last=False)
            else:
                update = self._updates.get(request.rid, b"")
        return ClaimResponse(rid=request.rid, result=result.as_dict(), update=update)

    def _run(self, request: ClaimRequest) -> ClaimResult:
        claims = self.replica.claims
        if request.op == "claim":
            assert request.ttl is not None
            return claims.decide_claim(request.task, request.agent, request.ttl, request_id=request.rid)
        assert request.epoch is not None
        return claims.decide_fenced(request.op, request.task, request.agent, request.epoch, request.ttl,
                                    request_id=request.rid)


def _merge(updates: list[bytes]) -> bytes:
    """Several Yjs updates as one."""
    from pycrdt import merge_updates

    return bytes(merge_updates(*updates))


class ArbiterUnreachable(Exception):
    """The arbiter could not be asked (refused, timed out, closed without an answer)."""


class ArbiterClient:
    """A claimant's link to the room's arbiter (`Claims.link`): blocking, safe from any thread."""

    def __init__(self, replica: Replica, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 cafile: str | None = None) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.replica = replica
        self.token = token
        self.timeout = timeout
        self.cafile = cafile
        self.last_error: str | None = None
        self._idle: dict[str, list[tuple[float, Any]]] = {}
        self._pool_lock = threading.Lock()

    def close(self) -> None:
        """Close the idle websockets kept for reuse."""
        with self._pool_lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for _, ws in connections:
                with suppress(Exception):
                    ws.close()

    def _take(self, url: str) -> Any:
        """An idle websocket to `url` still fresh enough to reuse, or None."""
        now = time.monotonic()
        stale: list[Any] = []
        found = None
        with self._pool_lock:
            connections = self._idle.get(url, [])
            while connections and found is None:
                since, ws = connections.pop()
                if now - since < CLIENT_IDLE:
                    found = ws
                else:
                    stale.append(ws)
        for ws in stale:
            with suppress(Exception):
                ws.close()
        return found

    def _give_back(self, url: str, ws: Any) -> None:
        with self._pool_lock:
            connections = self._idle.setdefault(url, [])
            if len(connections) < POOL_SIZE:
                connections.append((time.monotonic(), ws))
                return
        with suppress(Exception):
            ws.close()

    def send(self, arbiter: Arbiter, call: ArbiterCall) -> ArbiterAnswer | None:
        """Ask the arbiter; apply its update here; None when it cannot be reached within the timeout.

        A reply lost after sending is asked again with the same request id (the arbiter
        answers a repeated id with its first result); a task the arbiter has not received
        yet is asked again until the timeout."""
        request = ClaimRequest(call.op, call.request_id, call.task_id, call.agent, call.ttl, call.epoch)
        frame = encode_request(request)
        deadline = time.monotonic() + self.timeout
        pause = NOT_FOUND_RETRY
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                response = self._exchange(arbiter.url, frame, request.rid, left)
            except ConnectionRefusedError as error:
                self.last_error = f"{arbiter.url}: {error}"
                return None
            except ArbiterUnreachable as error:
                self.last_error = str(error)
                log.info("event=arbiter_unreachable url=%s error=%s", arbiter.url, error)
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, 0.5)
                continue
            self.last_error = None
            if response.error is not None and response.error.kind == "not_found":
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, 0.5)
                continue
            if response.update:
                try:
                    self.replica.apply_update(response.update, origin=f"arbiter:{arbiter.url}")
                except ReplicaError as error:
                    log.warning("event=arbiter_update_not_applied url=%s error=%s", arbiter.url, error)
            if response.error is not None:
                return ArbiterAnswer(response.result, response.error.kind, response.error.message)
            return ArbiterAnswer(response.result)

    def _exchange(self, url: str, frame: bytes, rid: str, timeout: float) -> ClaimResponse:
        """Send `frame` and read the response, on a reused websocket or a new one (ConnectionRefusedError,
        ArbiterUnreachable). A reused one that fails is dropped and the request sent on a new one."""
        reused = self._take(url)
        if reused is not None:
            try:
                return self._over(reused, url, frame, rid, timeout)
            except ArbiterUnreachable:
                log.debug("event=arbiter_reconnect url=%s", url)
        headers = {CLAIM_HEADER: "1"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        context = ssl.create_default_context(cafile=self.cafile) if url.startswith("wss:") else None
        try:
            ws = sync_connect(url, additional_headers=headers, ssl=context, open_timeout=timeout,
                              close_timeout=min(timeout, 1.0), max_size=MAX_RESPONSE_BYTES, compression=None,
                              proxy=None).__enter__()  # held open for reuse, closed by _over or close()
        except ConnectionRefusedError:
            raise
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as error:
            raise ArbiterUnreachable(f"{url}: {type(error).__name__}: {error}") from error
        return self._over(ws, url, frame, rid, timeout)

    def _over(self, ws: Any, url: str, frame: bytes, rid: str, timeout: float) -> ClaimResponse:
        """One request on an open websocket; kept for reuse when the answer is a decision."""
        try:
            ws.send(frame)
            answer = ws.recv(timeout=timeout)
            response = decode_response(answer, rid)
        except (OSError, TimeoutError, ConnectionClosed, ClaimProtocolError) as error:
            with suppress(Exception):
                ws.close()
            raise ArbiterUnreachable(f"{url}: {type(error).__name__}: {error}") from error
        if response.error is None or response.error.kind in ("not_found", "stale", "invalid"):
            self._give_back(url, ws)
        else:
            with suppress(Exception):
                ws.close()
        return response


def attach(replica: Replica, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT,
           cafile: str | None = None) -> ArbiterClient:
    """Let `replica`'s claims reach the room's arbiter (Python API); returns the installed client."""
    client = ArbiterClient(replica, token=token, timeout=timeout, cafile=cafile)
    replica.claims.link = client
    return client


async def ask(url: str, request: ClaimRequest, *, token: str | None = None,
              timeout: float = DEFAULT_TIMEOUT, ssl_context: ssl.SSLContext | None = None) -> ClaimResponse:
    """Send one request from asyncio code and return the arbiter's response (nothing is applied)."""
    from websockets.asyncio.client import connect

    headers = {CLAIM_HEADER: "1"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with asyncio.timeout(timeout):
        async with connect(url, additional_headers=headers, ssl=ssl_context, max_size=MAX_RESPONSE_BYTES,
                           compression=None, proxy=None) as ws:
            await ws.send(encode_request(request))
            answer: Any = await ws.recv()
    return decode_response(answer, request.rid)


__all__ = ["ArbiterClient", "ArbiterServer", "ArbiterUnreachable", "ErrorKind", "ask", "attach"]
