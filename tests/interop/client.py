"""An independent client of edgeflow's ingest and subscription protocols,
written from docs/PROTOCOL.md alone, on aioquic (a QUIC stack unrelated to
quinn). Used by tests/it/interop.rs.

    client.py ingest HOST PORT CA TOKEN SENDER FILE BATCH_LINES
        prints {"accepted": n, "rejected": n, "batches": n}
    client.py subscribe HOST PORT CA TOKEN KIND MODE
        prints one JSON object per row of the final state, then
        {"progress": ...} with the last progress marker
"""

import asyncio
import json
import struct
import sys

from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BI", kind, len(payload)) + payload


async def read_frame(reader):
    head = await reader.readexactly(5)
    kind, length = struct.unpack(">BI", head)
    return kind, await reader.readexactly(length)


def config(ca: str, alpn: str) -> QuicConfiguration:
    c = QuicConfiguration(is_client=True, alpn_protocols=[alpn])
    c.load_verify_locations(ca)
    c.server_name = "localhost"
    return c


async def ingest(host, port, ca, token, sender, path, batch_lines):
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    batches = [b"".join(lines[i:i + batch_lines]) for i in range(0, len(lines), batch_lines)]
    accepted = rejected = 0
    async with connect(host, port, configuration=config(ca, "edgeflow-ingest/1")) as conn:
        reader, writer = await conn.create_stream()
        t, s = token.encode(), sender.encode()
        writer.write(frame(0x01, bytes([len(t)]) + t + bytes([len(s)]) + s))
        kind, payload = await read_frame(reader)
        if kind != 0x02:
            raise SystemExit(f"expected WELCOME, got {kind:#x}: {payload!r}")
        (next_seq,) = struct.unpack(">Q", payload)
        for seq in range(next_seq, len(batches)):
            r, w = await conn.create_stream()
            w.write(frame(0x03, struct.pack(">QB", seq, 0) + batches[seq]))
            w.write_eof()
            kind, payload = await read_frame(r)
            if kind != 0x04:
                raise SystemExit(f"expected ACK, got {kind:#x}: {payload!r}")
            ack_seq, ok, bad = struct.unpack(">QII", payload[:16])
            assert ack_seq == seq, (ack_seq, seq)
            accepted += ok
            rejected += bad
    print(json.dumps({"accepted": accepted, "rejected": rejected, "batches": len(batches)}))


async def subscribe(host, port, ca, token, kind, mode, ready_file):
    rows, progress = {}, None
    async with connect(host, port, configuration=config(ca, "edgeflow-subscribe/1")) as conn:
        reader, writer = await conn.create_stream()
        request = {"token": token, "kind": kind, "mode": mode}
        writer.write(frame(0x11, json.dumps(request).encode()))
        while True:
            try:
                t, payload = await read_frame(reader)
            except asyncio.IncompleteReadError:
                break
            body = json.loads(payload)
            if t == 0x12:
                key = (body["key"], body["window_start_ms"])
                if body["op"] == "upsert":
                    rows[key] = body["value"]
                else:
                    rows.pop(key, None)
            elif t == 0x13:
                progress = body
                if body["snapshot"] and ready_file:
                    open(ready_file, "w").close()
            elif t == 0x7F:
                raise SystemExit(f"error {body['code']}: {body['message']}")
    for (key, window), value in sorted(rows.items()):
        print(json.dumps({"key": key, "window_start_ms": window, "value": value}))
    print(json.dumps({"progress": progress}))


def main():
    mode, host, port, ca = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if mode == "ingest":
        token, sender, path, n = sys.argv[5], sys.argv[6], sys.argv[7], int(sys.argv[8])
        asyncio.run(ingest(host, port, ca, token, sender, path, n))
    else:
        token, kind, sub_mode, ready = sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8]
        asyncio.run(subscribe(host, port, ca, token, kind, sub_mode, ready))


if __name__ == "__main__":
    main()
