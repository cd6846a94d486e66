#!/usr/bin/env python3
"""Memory per idle keep-alive client connection (issue 8).

Opens N keep-alive connections to a proxy, sends one GET on each (so the
connection has served a request, as a real idle client has), reads the
answer, and holds them all open while it samples the proxy's VmRSS; prints
the RSS before, with the connections held, and the cost per connection.

  bench/idle-conns.py --port 8080 --pid PID [--conns 10000]
"""
import argparse
import asyncio
import resource
import sys


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


async def one(port, held, failures):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        w.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        await w.drain()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if length:
            await asyncio.wait_for(r.readexactly(length), 10)
        held.append(w)
    except Exception as e:  # counted, reported, never fatal
        failures.append(repr(e))


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--batch", type=int, default=500)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.conns + 1000)), hard))
    before = rss_kib(a.pid)
    held, failures = [], []
    for start in range(0, a.conns, a.batch):
        await asyncio.gather(*(one(a.port, held, failures) for _ in range(min(a.batch, a.conns - start))))
    await asyncio.sleep(1.0)  # let the proxy settle (buffers shrink, tasks park)
    during = rss_kib(a.pid)
    for w in held:
        w.close()
    n = len(held)
    per = (during - before) / n if n else float("nan")
    print(f"idle connections held: {n} (failed: {len(failures)}{', first: ' + failures[0] if failures else ''})")
    print(f"proxy RSS before: {before} KiB, with them: {during} KiB, per connection: {per:.1f} KiB")
    return 0 if n == a.conns else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
