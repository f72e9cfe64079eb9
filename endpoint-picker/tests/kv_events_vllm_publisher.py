#!/usr/bin/env python3
"""A stand-in for a vLLM pod's KV-event publisher, for kvpick's interop tests.

It uses the msgspec structs declared the way vLLM's `vllm.distributed.kv_events` does (in the
array_like layout of older vLLM, the map layout of newer vLLM, or the mixed one) and publishes
the way vLLM's `ZmqEventPublisher` does, with pyzmq (libzmq): a PUB socket that binds (connect
mode: kvpick connects to it) or connects (bind mode: kvpick binds), multipart
`[topic, seq (8 bytes big-endian), payload]`, an in-memory buffer of past batches, and a ROUTER
replay socket answering `["", start_seq]` with every buffered batch from start_seq on, then the
end marker (seq -1, empty payload). One publisher thread serves both, as vLLM's does.

Protocol with the test: prints `READY <pub endpoint or -> <replay endpoint>` once bound, then
reads JSON lines on stdin: `{"publish": [[event, ...], ...]}` publishes batches (each a list of
events as JSON objects with a "type"), `{"quit": true}` (or EOF) stops.
"""

import argparse
import hashlib
import itertools
import json
import queue
import sys
import threading
import time
from collections import deque
from pathlib import Path

import msgspec
import zmq

# vLLM's struct declarations, shared with kvpick's other Python peers.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scheduler" / "tests"))
from vllm_kv_events import ExternalBlockHash, structs  # noqa: E402


class Publisher:
    """vLLM's ZmqEventPublisher, reduced to what the wire shows."""

    END_SEQ = (-1).to_bytes(8, "big", signed=True)

    def __init__(self, args):
        self._ctx = zmq.Context.instance()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.set_hwm(100_000)
        if args.mode == "connect":
            self._pub.bind("tcp://127.0.0.1:*")
            self.pub_endpoint = self._pub.getsockopt(zmq.LAST_ENDPOINT).decode()
        else:
            self._pub.connect(args.endpoint)
            self.pub_endpoint = "-"
        self._replay = self._ctx.socket(zmq.ROUTER)
        self._replay.bind("tcp://127.0.0.1:*")
        self.replay_endpoint = self._replay.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._topic = args.topic.encode("utf-8")
        self._replay_topic = args.replay_topic
        self._rank = args.rank
        self._queue: queue.Queue = queue.Queue(maxsize=100_000)
        self._buffer: deque = deque(maxlen=10_000)
        self._seq = itertools.count()
        self._pack = msgspec.msgpack.Encoder()
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def publish(self, batch) -> None:
        if batch.data_parallel_rank is None:
            batch.data_parallel_rank = self._rank
        self._queue.put(batch)

    def shutdown(self) -> None:
        self._running = False
        self._queue.put(None)
        self._thread.join(timeout=5)
        self._pub.close(linger=0)
        self._replay.close(linger=0)

    def _run(self) -> None:
        while self._running or not self._queue.empty():
            if self._replay.poll(0):
                self._service_replay()
            try:
                batch = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if batch is None:
                break
            seq = next(self._seq)
            payload = self._pack.encode(batch)
            self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload))
            self._buffer.append((seq, payload))

    def _service_replay(self) -> None:
        frame = self._replay.recv_multipart()
        if len(frame) != 3:
            return
        client_id, _, start_seq_bytes = frame
        start_seq = int.from_bytes(start_seq_bytes, "big")
        for seq, buf in self._buffer:
            if seq >= start_seq:
                head = (client_id, b"", self._topic) if self._replay_topic else (client_id, b"")
                self._replay.send_multipart((*head, seq.to_bytes(8, "big"), buf))
        self._replay.send_multipart((client_id, b"", self.END_SEQ, b""))


def block_hash(h: int, as_bytes: bool) -> ExternalBlockHash:
    """An int hash, or a 32-byte digest whose low 64 bits (big-endian tail) are that int."""
    if not as_bytes:
        return h
    return hashlib.sha256(str(h).encode()).digest()[:24] + h.to_bytes(8, "big")


def to_event(e: dict, types, as_bytes: bool):
    _, BlockStored, BlockRemoved, AllBlocksCleared = types
    hashes = [block_hash(h, as_bytes) for h in e.get("block_hashes", [])]
    if e["type"] == "BlockStored":
        parent = e.get("parent_block_hash")
        return BlockStored(
            block_hashes=hashes,
            parent_block_hash=None if parent is None else block_hash(parent, as_bytes),
            token_ids=e["token_ids"],
            block_size=e["block_size"],
            lora_id=None,
            medium=e.get("medium"),
            lora_name=None,
        )
    if e["type"] == "BlockRemoved":
        return BlockRemoved(block_hashes=hashes, medium=e.get("medium"))
    return AllBlocksCleared()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["connect", "bind"], required=True)
    p.add_argument("--endpoint", default="", help="bind mode: kvpick's tcp://ip:port")
    p.add_argument("--layout", choices=["array", "map", "mixed"], default="map")
    p.add_argument("--hashes", choices=["int", "bytes"], default="int")
    p.add_argument("--topic", default="")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--replay-topic", action="store_true", help='reply ["", topic, seq, payload]')
    args = p.parse_args()
    batch_array = args.layout in ("array", "mixed")
    types = structs(batch_array, args.layout == "array")
    as_bytes = args.hashes == "bytes"
    publisher = Publisher(args)
    print(f"READY {publisher.pub_endpoint} {publisher.replay_endpoint}", flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        for events in command.get("publish", []):
            publisher.publish(
                types[0](ts=time.time(), events=[to_event(e, types, as_bytes) for e in events])
            )
    publisher.shutdown()


if __name__ == "__main__":
    main()
