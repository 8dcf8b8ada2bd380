"""`relay cloud serve`: the LLM relay service."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud.config import CloudConfig
    from cloud.engine import Engine


def register(sub: argparse._SubParsersAction) -> None:
    cloud = sub.add_parser("cloud", help="the cloud LLM relay service")
    cloud_sub = cloud.add_subparsers(dest="cloud_command", required=True, metavar="ACTION")
    serve = cloud_sub.add_parser("serve", help="start the gRPC relay server")
    serve.add_argument("--config", type=Path, help="YAML config (see configs/cloud.yaml)")
    serve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    serve.add_argument("--host", help="interface to bind")
    serve.add_argument("--port", type=int, help="port (0: pick a free one)")
    serve.add_argument("--llm", help="model name, hub id or directory")
    serve.add_argument("--engine", choices=("transformers", "vllm"), help="what runs the LLM (default: transformers)")
    serve.add_argument("--insecure", action="store_true", help="allow a non-loopback address without a bearer token")
    serve.set_defaults(func=run_serve)
    health = cloud_sub.add_parser("health", help="exit 0 when a relay server reports SERVING (grpc.health.v1)")
    health.add_argument("--address", default="127.0.0.1:50051", help="host:port (default 127.0.0.1:50051)")
    health.add_argument("--tls-ca", type=Path, help="CA certificate of a TLS server")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    health.set_defaults(func=run_health)


def run_health(args: argparse.Namespace) -> int:
    """One line and exit 0 for SERVING; one line and exit 1 for anything else (a healthcheck)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from common.errors import UserError

    if args.tls_ca is not None:
        try:
            creds = grpc.ssl_channel_credentials(root_certificates=args.tls_ca.read_bytes())
        except OSError as exc:
            raise UserError(f"--tls-ca {args.tls_ca}: {exc.strerror or exc}") from None
        channel = grpc.secure_channel(args.address, creds)
    else:
        channel = grpc.insecure_channel(args.address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
        except grpc.RpcError as exc:
            detail = next(iter((exc.details() or "").splitlines()), "")
            print(f"{args.address}: {exc.code().name} {detail}".rstrip())
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if status == "SERVING" else 1


def run_serve(args: argparse.Namespace) -> int:
    import logging

    from cloud.config import load_cloud_config, security_mode
    from cloud.server import serve

    overrides = list(args.set)
    for key in ("host", "port", "llm", "engine"):
        if getattr(args, key) is not None:
            overrides.append(f"{key}={getattr(args, key)}")
    if args.insecure:
        overrides.append("allow_insecure=true")
    config = load_cloud_config(args.config, overrides)
    mode = security_mode(config)  # before loading the model: a refused start costs nothing
    logging.getLogger("cloud").warning("serving: %s", mode)
    model_dir = resolve_llm_dir(config.llm, config.cache_dir)
    asyncio.run(serve(load_engine(config, model_dir), config))
    return 0


def load_engine(config: CloudConfig, model_dir: Path) -> Engine:
    """The configured engine on `model_dir` (a UserError with the reason if it cannot start)."""
    if config.engine == "vllm":
        from cloud.vllm_engine import VllmEngine

        return VllmEngine.load(model_dir, config.vllm, max_context=config.max_context)
    from cloud.backend import TransformersBackend
    from cloud.engine import StepEngine

    backend = TransformersBackend.load(
        model_dir, device=config.device, dtype=config.dtype, threads=config.threads, max_context=config.max_context
    )
    return StepEngine(backend)


def resolve_llm_dir(llm: str, cache_dir: Path | None) -> Path:
    if Path(llm).is_dir():
        return Path(llm)
    from models.supply import ensure_model

    return ensure_model(llm, cache_dir=cache_dir)
