"""Fuzzing client for test_mesh_fuzz: run as `python -m tests.transport.fuzzclient URL CORPUS SEED`.

It runs in its own process, so that the server under test has an event loop (and a
core) to itself. CORPUS is a msgpack file holding the server's state and some of its
updates (the seeds). The client sends random and mutated frames over WORKERS
connections, reconnecting whenever the server closes one, until it is terminated.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
from pycrdt import Doc
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from replica.statevector import decode_state_vector
from transport.messages import (
    PROTOCOL_VERSION,
    AuthPermissionDenied,
    Awareness,
    AwarenessEntry,
    Hello,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    decode,
    encode,
    encode_awareness_update,
)
from transport.updates import document_digest
from transport.wire import ProtocolError, encode_varuint

WORKERS = 8
SETTLE = 0.002
"""Seconds to wait after each frame for the server to close, so that frames are not wasted."""
FRAME_LIMIT = 64 * 1024
"""The server under test refuses frames above this (a few fuzz frames exceed it on purpose)."""


def doc_fingerprint(doc: Doc) -> tuple[tuple[tuple[int, int], ...], bytes]:
    """Sorted state vector and digest of a bare Doc."""
    return tuple(sorted(decode_state_vector(doc.get_state()).items())), document_digest(doc)


class Corpus:
    """Seeds taken from real traffic, and mutations of them."""

    def __init__(self, rng: random.Random, server_state: bytes, updates: list[bytes]) -> None:
        self.rng = rng
        self.server_state = server_state
        scratch = Doc()
        scratch.apply_update(server_state)
        self.baseline = doc_fingerprint(scratch)
        self.excluded_writes = 0
        entries = [AwarenessEntry(rng.randrange(1, 2**32), rng.randrange(1, 9), {"user": "fuzz", "n": i}) for i in range(4)]
        self.seeds: list[bytes] = [
            encode(SyncStep1(b"\x00")),
            encode(SyncStep1(scratch.get_state())),
            encode(SyncStep2(server_state)),
            encode(SyncStep2(b"\x00\x00")),
            encode(SyncUpdate(b"\x00\x00")),
            *(encode(SyncUpdate(update)) for update in updates),
            *(encode(SyncStep2(update)) for update in updates[:3]),
            encode(Awareness(encode_awareness_update(entries))),
            encode(Awareness(encode_awareness_update([AwarenessEntry(entries[0].client_id, 99, None)]))),
            encode(QueryAwareness()),
            encode(AuthPermissionDenied("fuzz says no")),
            encode(Hello(PROTOCOL_VERSION, "fuzz-hello-replica", ["agentstate"], frozenset({"digest"}), bytes(32))),
            encode(Hello(PROTOCOL_VERSION, "fuzz-other-room", ["elsewhere"])),
        ]

    def frames(self) -> Iterator[bytes | str]:
        """An endless stream of frames: some seeds as they are, mostly mutated or random."""
        while True:
            frame = self._one()
            if isinstance(frame, bytes) and self._would_write(frame):
                self.excluded_writes += 1
                continue
            yield frame

    def _one(self) -> bytes | str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.15:
            return rng.choice(self.seeds)
        if roll < 0.22:
            return bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 48)))
        if roll < 0.24:
            return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(0, 40)))
        if roll < 0.25:
            return bytes([0, 2]) + encode_varuint(FRAME_LIMIT) + bytes(FRAME_LIMIT)
        frame = bytearray(rng.choice(self.seeds))
        for _ in range(rng.randrange(1, 4)):
            self._mutate(frame)
        return bytes(frame[: 4 * 1024])

    def _mutate(self, frame: bytearray) -> None:
        rng = self.rng
        kind = rng.randrange(8)
        position = rng.randrange(len(frame) + 1)
        if kind == 0 and frame:
            index = min(position, len(frame) - 1)
            frame[index] ^= 1 << rng.randrange(8)
        elif kind == 1 and frame:
            frame[min(position, len(frame) - 1)] = rng.getrandbits(8)
        elif kind == 2:
            frame[position:position] = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 9)))
        elif kind == 3:
            del frame[position : position + rng.randrange(1, 9)]
        elif kind == 4:
            del frame[position:]
        elif kind == 5:
            frame[position:position] = frame[rng.randrange(len(frame) + 1) :][: rng.randrange(1, 64)]
        elif kind == 6:
            frame[position:position] = encode_varuint(rng.choice([0, 127, 128, 2**21, 2**53 - 1]))
        else:
            frame += rng.choice(self.seeds)

    def _would_write(self, frame: bytes) -> bool:
        """True if the frame is a valid update that would change the server's document."""
        try:
            message = decode(frame)
        except ProtocolError:
            return False
        if not isinstance(message, (SyncStep2, SyncUpdate)):
            return False
        scratch = Doc()
        scratch.apply_update(self.server_state)
        try:
            scratch.apply_update(message.update)
        except BaseException as error:
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            return False
        return doc_fingerprint(scratch) != self.baseline


async def fuzz_worker(url: str, frames: Iterator[bytes | str]) -> None:
    """Send frames on a connection until the server closes it, then reconnect, forever."""
    while True:
        try:
            ws = await connect(url, max_size=None, compression=None, ping_interval=None, proxy=None)
        except (OSError, InvalidHandshake):
            await asyncio.sleep(0.01)
            continue

        closed = asyncio.Event()

        async def drain() -> None:
            try:
                async for _ in ws:
                    pass
            except ConnectionClosed:
                pass
            finally:
                closed.set()

        reader = asyncio.create_task(drain())
        try:
            while not closed.is_set():
                await ws.send(next(frames))
                try:
                    await asyncio.wait_for(closed.wait(), SETTLE)
                except TimeoutError:
                    pass
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await ws.close()


async def main(url: str, corpus_file: Path, seed: int) -> None:
    """Fuzz `url` until terminated."""
    data = msgpack.unpackb(corpus_file.read_bytes())
    corpus = Corpus(random.Random(seed), data["state"], data["updates"])
    frames = corpus.frames()
    await asyncio.gather(*(fuzz_worker(url, frames) for _ in range(WORKERS)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])))
