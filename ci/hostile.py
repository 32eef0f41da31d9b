#!/usr/bin/env python3
"""Hostile clients against the load balancer's public port, all at once, for SECONDS:

  ids       10,000 requests with 60 kB invalid user ids (keep-alive, 8 connections)
  slowloris 1,000 connections that send half a request header and then a byte every 5 s
  distinct  requests for distinct valid user ids (from 10,000,000 up; 8 connections) until
            1,000,000 were sent or the time is up

Prints one JSON object: what each attack sent and what it got back (statuses, largest body,
how long the slow connections lived). Standard library only.
"""
import asyncio
import json
import sys
import time

HOST, PORT = sys.argv[1], int(sys.argv[2])
SECONDS = float(sys.argv[3]) if len(sys.argv) > 3 else 300.0


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    return status, len(body)


async def client(paths, out, deadline):
    """Sends GETs for `paths` (an iterator) on one keep-alive connection, reconnecting if closed."""
    reader = writer = None
    for path in paths:
        if time.monotonic() > deadline:
            return
        for _attempt in range(3):
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(HOST, PORT)
                writer.write(f"GET {path} HTTP/1.1\r\nhost: lb\r\n\r\n".encode())
                await writer.drain()
                status, size = await read_response(reader)
                out["statuses"][status] = out["statuses"].get(status, 0) + 1
                out["largest_body"] = max(out["largest_body"], size)
                break
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                out["transport_errors"] += 1
                writer = None
    if writer is not None:
        writer.close()


async def attack(name, paths_per_conn, conns, deadline):
    out = {"statuses": {}, "largest_body": 0, "transport_errors": 0}
    start = time.monotonic()
    await asyncio.gather(*(client(paths_per_conn(i), out, deadline) for i in range(conns)))
    out["sent"] = sum(out["statuses"].values())
    out["seconds"] = round(time.monotonic() - start, 1)
    return name, out


async def slowloris(n, deadline):
    lived = []
    refused = 0

    async def one():
        nonlocal refused
        try:
            reader, writer = await asyncio.open_connection(HOST, PORT)
        except OSError:
            refused += 1
            return
        opened = time.monotonic()
        try:
            writer.write(b"GET /recommend/1 HTTP/1.1\r\nhost: lb\r\n")
            await writer.drain()
            while time.monotonic() < deadline:
                try:
                    data = await asyncio.wait_for(reader.read(1024), timeout=5)
                    if not data:
                        break
                except asyncio.TimeoutError:
                    writer.write(b"x")
                    await writer.drain()
        except OSError:
            pass
        lived.append(time.monotonic() - opened)
        writer.close()

    # Opened over a second (a connect storm is not the point), then held.
    tasks = []
    for _ in range(n):
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(1.0 / n)
    await asyncio.gather(*tasks)
    lived.sort()
    closed_by_server = sum(1 for t in lived if t < SECONDS - 5)
    return "slowloris", {
        "connections": n,
        "refused_at_connect": refused,
        "closed_by_server": closed_by_server,
        "lived_median_s": round(lived[len(lived) // 2], 1) if lived else None,
        "lived_max_s": round(lived[-1], 1) if lived else None,
    }


async def main():
    deadline = time.monotonic() + SECONDS
    long_id = "x" * 60_000

    def ids(i):
        return (f"/recommend/{long_id}{i}-{k}" for k in range(10_000 // 8))

    def distinct(i):
        return (f"/recommend/{10_000_000 + k * 8 + i}" for k in range(1_000_000 // 8))

    results = await asyncio.gather(
        attack("invalid_ids", ids, 8, deadline),
        attack("distinct_ids", distinct, 8, deadline),
        slowloris(1_000, deadline),
    )
    print(json.dumps(dict(results), indent=1))


asyncio.run(main())
