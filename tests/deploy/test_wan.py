"""`relay bench wan` and its parts: the delay proxy against a real echo server over TCP, and the
whole bench in two real network namespaces with tc shaping, on the tiny models."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmarks.netns import problem
from common.ready import read_ready_address


def echo_server() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: _echo(c), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def start_proxy(port: int, *args: str) -> tuple[subprocess.Popen, str]:
    proxy = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.delay_proxy", "--to", f"127.0.0.1:{port}", *args],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    address = read_ready_address(proxy, 30, prefix="RELAY-PROXY-READY")
    assert address is not None
    return proxy, address


def round_trips(address: str, count: int, payload: bytes = b"x") -> list[float]:
    host, port = address.rsplit(":", 1)
    times = []
    with socket.create_connection((host, int(port))) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            t0 = time.perf_counter()
            conn.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += conn.recv(65536)
            assert got == payload
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def test_delay_proxy_adds_the_round_trip_and_keeps_every_byte() -> None:
    server, port = echo_server()
    proxy, address = start_proxy(port, "--delay-ms", "40")
    try:
        rtts = round_trips(address, 10)
        assert 80 <= statistics.median(rtts) < 140, rtts
        big = bytes(range(256)) * 4096  # 1 MiB, in many chunks, echoed intact and in order
        assert round_trips(address, 1, big)
    finally:
        proxy.kill()
        server.close()


def test_delay_proxy_loss_costs_a_retransmission_timeout() -> None:
    server, port = echo_server()
    proxy, address = start_proxy(port, "--loss", "0.3", "--seed", "1")
    try:
        rtts = round_trips(address, 30)
    finally:
        proxy.kill()
        server.close()
    slow = [t for t in rtts if t >= 200]  # a "lost" chunk waits Linux's minimum RTO
    fast = [t for t in rtts if t < 50]
    assert slow and fast and len(slow) + len(fast) == len(rtts), rtts


def test_delay_proxy_refuses_bad_arguments() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.delay_proxy", "--to", "127.0.0.1:1", "--loss", "1.5"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "--loss must be in [0, 1)" in done.stderr


NAMESPACES_PROBLEM = problem()


@pytest.mark.skipif(NAMESPACES_PROBLEM is not None, reason=f"namespaces: {NAMESPACES_PROBLEM}")
def test_bench_wan_in_namespaces_on_tiny_models(tiny_pair, tiny_onnx, tmp_path: Path) -> None:
    out = tmp_path / "wan"
    namespaces_before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    done = subprocess.run(
        [sys.executable, "-m", "relaycli.main", "bench", "wan", "--profiles", "loopback,wan-80ms",
         "--prompt", "Tom has 3 boxes with 4 apples.", "--prompt", "What is 2+2?", "--max-new-tokens", "12",
         "--llm", str(tiny_pair[1]), "--set", f"models.slm_onnx_dir={tiny_onnx}", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert {(r["profile"], r["policy"]) for r in rows} == {
        (p, q) for p in ("loopback", "wan-80ms") for q in ("entropy", "cloud-only")
    }
    profiles = ("loopback", "wan-80ms")
    llm_only = {p: [r for r in rows if r["profile"] == p and r["policy"] == "cloud-only"] for p in profiles}
    for row in llm_only["wan-80ms"]:
        assert row["llm_tokens"] == 12 and row["network_ms"] >= 80  # at least one 80 ms round trip
    assert max(r["network_ms"] for r in llm_only["loopback"]) < min(r["network_ms"] for r in llm_only["wan-80ms"])
    assert "| wan-80ms | cloud-only |" in (out / "summary.md").read_text()
    assert (out / "wan.png").stat().st_size > 10_000
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert not {n for n in after - namespaces_before if n.startswith("relay-")}, "namespaces left behind"
