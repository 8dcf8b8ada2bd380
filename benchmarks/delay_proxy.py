"""A TCP relay that adds WAN latency and loss, for kernels without netem (like this project's
machines). Bandwidth is shaped by tc tbf on the veth link (benchmarks/netns.py); this adds the rest.

- Latency: every chunk read in one direction is written out `delay_ms` later (one-way delay, so a
  round trip costs 2 x delay_ms), in order, without holding back the chunks behind it.
- Loss: TCP never loses bytes, it retransmits; what a lost segment costs the application is the
  retransmission timeout, during which everything behind it waits (head-of-line blocking). So a
  chunk is "lost" with probability `loss` and then delivered one RTO later (Linux's minimum RTO
  200 ms + the round trip), and the chunks after it queue behind it. An approximation of netem
  loss, stated as such wherever its figures appear.

    python -m benchmarks.delay_proxy --listen 127.0.0.1:0 --to 10.77.0.2:50051 --delay-ms 10 --loss 0.01
prints `RELAY-PROXY-READY host:port`, then relays until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass

MIN_RTO_MS = 200.0  # Linux TCP_RTO_MIN


@dataclass(frozen=True)
class LinkProfile:
    name: str
    delay_ms: float = 0.0
    """One-way delay (the round trip is twice this)."""
    loss: float = 0.0
    """Share of chunks that wait one retransmission timeout."""

    @property
    def rtt_ms(self) -> float:
        return 2 * self.delay_ms

    def retransmit_ms(self) -> float:
        return MIN_RTO_MS + self.rtt_ms


class DelayLine:
    """Deliver chunks in order, each no earlier than its arrival plus the profile's delay."""

    def __init__(self, profile: LinkProfile, rng: random.Random, writer: asyncio.StreamWriter) -> None:
        self.profile, self.rng, self.writer = profile, rng, writer
        self.queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self.lost = 0

    def push(self, chunk: bytes) -> None:
        due = time.monotonic() + self.profile.delay_ms / 1e3
        if self.profile.loss and self.rng.random() < self.profile.loss:
            self.lost += 1
            due += self.profile.retransmit_ms() / 1e3
        self.queue.put_nowait((due, chunk))

    async def run(self) -> None:
        while (item := await self.queue.get()) is not None:
            due, chunk = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.writer.write(chunk)
            await self.writer.drain()
        self.writer.close()


async def pump(reader: asyncio.StreamReader, line: DelayLine) -> None:
    try:
        while chunk := await reader.read(65536):
            line.push(chunk)
    except ConnectionError:
        pass
    finally:
        line.queue.put_nowait(None)


async def serve(listen: tuple[str, int], target: tuple[str, int], profile: LinkProfile, seed: int) -> None:
    rng = random.Random(seed)

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.close()
            return
        up, down = DelayLine(profile, rng, server_writer), DelayLine(profile, rng, client_writer)
        tasks = [pump(client_reader, up), pump(server_reader, down), up.run(), down.run()]
        await asyncio.gather(*tasks, return_exceptions=True)

    server = await asyncio.start_server(handle, *listen)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"RELAY-PROXY-READY {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def split_address(text: str) -> tuple[str, int]:
    """`host:port` for argparse (a bad one is a one-line usage error)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=split_address, default="127.0.0.1:0")
    parser.add_argument("--to", type=split_address, required=True, help="host:port to relay to")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay")
    parser.add_argument("--loss", type=float, default=0.0, help="share of chunks delayed by one RTO")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 <= args.loss < 1 or args.delay_ms < 0:
        parser.error("--loss must be in [0, 1) and --delay-ms >= 0")
    profile = LinkProfile("cli", args.delay_ms, args.loss)
    try:
        asyncio.run(serve(args.listen, args.to, profile, args.seed))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the listen address cannot be bound
        print(f"error: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
