"""Starting and stopping the gRPC relay server: service, health, reflection, metrics, TTL sweeps."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cloud.backend import LlmBackend
from cloud.config import CloudConfig
from cloud.engine import Engine, as_engine
from cloud.metrics import Metrics
from cloud.servicer import RelayServicer
from common.errors import UserError
from common.ready import READY_PREFIX
from common.wire import pb, pb_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RelayService"].full_name


@dataclass
class RunningServer:
    server: grpc.aio.Server
    servicer: RelayServicer
    health: health.aio.HealthServicer
    port: int
    sweeper: asyncio.Task
    engine_dead: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the engine died: health is NOT_SERVING and `serve` exits non-zero."""
    why_dead: str = ""

    def mark_engine_dead(self, why: str) -> None:
        if self.engine_dead.is_set():
            return
        self.why_dead = why
        self.engine_dead.set()
        for name in ("", SERVICE_NAME):
            asyncio.ensure_future(self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING))

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        self.sweeper.cancel()
        await self.server.stop(grace)
        self.servicer.shutdown()


def _credentials(config: CloudConfig) -> grpc.ServerCredentials | None:
    if config.tls is None:
        return None
    try:
        key = config.tls.key_file.read_bytes()
        cert = config.tls.cert_file.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read TLS files: {exc}") from None
    return grpc.ssl_server_credentials([(key, cert)])


async def _sweep(servicer: RelayServicer, period_s: float) -> None:
    while True:
        await asyncio.sleep(period_s)
        dropped = servicer.store.expire_idle()
        if dropped:
            log.info("dropped %d idle session(s)", dropped)
            servicer._update_gauges()


async def start_server(
    engine: Engine | LlmBackend, config: CloudConfig, metrics: Metrics | None = None
) -> RunningServer:
    metrics = metrics or Metrics()
    engine = as_engine(engine)
    await engine.start()
    servicer = RelayServicer(engine, config, metrics)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_RelayServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{config.host}:{config.port}"
    credentials = _credentials(config)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise UserError(f"cannot bind {address}: {exc}") from None
    if port == 0:
        raise UserError(f"cannot bind {address} (in use?)")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if config.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, addr=config.host, registry=metrics.registry)
    sweeper = asyncio.create_task(_sweep(servicer, max(1.0, config.idle_ttl_s / 4)))
    running = RunningServer(server, servicer, health_servicer, port, sweeper)
    servicer.on_engine_dead = running.mark_engine_dead
    return running


async def serve(engine: Engine | LlmBackend, config: CloudConfig) -> None:
    """Run until SIGINT/SIGTERM; print one ready line with the bound port for supervisors."""
    running = await start_server(engine, config)
    print(f"{READY_PREFIX} {config.host}:{running.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(running.engine_dead.wait())]
    if config.parent_pid is not None:
        waits.append(asyncio.ensure_future(_parent_gone(config.parent_pid)))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for waiting in waits:
        waiting.cancel()
    await running.stop(0 if running.engine_dead.is_set() else config.grace_s)
    if running.engine_dead.is_set():  # exit non-zero so compose/systemd/k8s restart the service
        raise UserError(f"stopping: {running.why_dead}")


async def _parent_gone(pid: int, every_s: float = 1.0) -> None:
    """Return once process `pid` no longer parents this one (it died and we were re-parented)."""
    while os.getppid() == pid:
        await asyncio.sleep(every_s)


class BackgroundServer:
    """The relay server on its own event loop in a daemon thread, for blocking callers (tests,
    benchmarks): `with BackgroundServer(backend, config) as server: CloudLink(server.address)`."""

    def __init__(self, backend: Engine | LlmBackend, config: CloudConfig) -> None:
        import threading

        self.backend = backend
        self.config = config
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="relay-server")
        self.running: RunningServer | None = None

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        self.running = self.call(start_server(self.backend, self.config))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        assert self.running is not None
        return f"{self.config.host}:{self.running.port}"

    def call(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float = 0.0) -> None:
        if self.running is not None:
            self.call(self.running.stop(grace))
            self.running = None
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
