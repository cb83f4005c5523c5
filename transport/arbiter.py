"""The claim arbiter over websockets: the server a `serve --arbiter` mesh answers claims with, and the claimant's client.

A claimant opens a short websocket to the arbiter's room URL with the header
`X-Agentstate-Claim: 1` and its bearer token, sends one request frame and reads one
response frame (`transport.claim_protocol`). The arbiter decides on its replica, under the
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
"""Seconds the arbiter waits for a claimant's request frame after the websocket opened."""
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
        self._unsubscribe = replica.on_update(self._on_update)

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
        """Serve one claim websocket: read one request frame, refuse it or decide it, answer, close.

        A refused claimant's frame is read (and dropped) before the answer, so that the
        answer never races the claimant's send."""
        remote = str(ws.remote_address)
        refusal: ClaimResponse | None = None
        if not access.allowed:
            refusal = error_response("", "unauthorized", f"token refused: {access.reason}")
        elif access.read_only:
            refusal = error_response("", "forbidden", "a read-only token cannot claim")
        elif not room_ok:
            refusal = error_response("", "room", f"this arbiter decides claims of room {self.room!r} only")
        try:
            frame = await asyncio.wait_for(ws.recv(), REQUEST_WAIT)
        except (TimeoutError, ConnectionClosed):
            with suppress(Exception):
                await ws.close()
            return
        if refusal is not None:
            await self._finish(ws, refusal, remote)
            return
        try:
            request = decode_request(frame)
        except ClaimProtocolError as error:
            await self._finish(ws, error_response("", error.kind, str(error)), remote)
            return
        response = await asyncio.to_thread(self.decide, request)
        await self._finish(ws, response, remote)

    async def _finish(self, ws: ServerConnection, response: ClaimResponse, remote: str) -> None:
        """Send the answer and close; a refusal is logged and counted."""
        if response.error is not None and response.error.kind not in ("not_found", "stale"):
            self._count(response.error.kind)
            log.warning("event=claim_refused peer=%s kind=%s detail=%s", remote, response.error.kind,
                        response.error.message[:200])
        with suppress(ConnectionClosed):
            await ws.send(encode_response(response))
            await ws.close()

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
        """One websocket: send `frame`, read the response (ConnectionRefusedError, ArbiterUnreachable)."""
        headers = {CLAIM_HEADER: "1"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        context = ssl.create_default_context(cafile=self.cafile) if url.startswith("wss:") else None
        try:
            with sync_connect(url, additional_headers=headers, ssl=context, open_timeout=timeout,
                              close_timeout=timeout, max_size=MAX_RESPONSE_BYTES, compression=None,
                              proxy=None) as ws:
                ws.send(frame)
                answer = ws.recv(timeout=timeout)
        except ConnectionRefusedError:
            raise
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as error:
            raise ArbiterUnreachable(f"{url}: {type(error).__name__}: {error}") from error
        try:
            return decode_response(answer, rid)
        except ClaimProtocolError as error:
            raise ArbiterUnreachable(f"{url}: not a claim answer: {error}") from error


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
