"""`relay edge serve`: the OpenAI-compatible API (`edge.openai_api`) on FastAPI + uvicorn.

    relay edge serve [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--cloud HOST:PORT|embedded|off]

then any OpenAI client: `OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY)`. With no
`--cloud` the engine is the embedded default, as for `relay chat`.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at run time,
# and `Request` is imported inside `make_app` (fastapi loads only when the API is served).
import argparse
import asyncio
import hmac
from typing import Any

from edge.openai_api import ApiError, ChatRequest, RelayService, complete, stream_chunks


def make_app(service: RelayService) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="RelayLLM edge", version="1")

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse(ApiError(400, f"{where}: {first.get('msg', 'invalid')}").body(), status_code=400)

    def authorize(request: Request) -> None:
        if service.api_key is None:
            return
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {service.api_key}".encode()):
            raise ApiError(401, "missing or wrong API key", kind="authentication_error", code="invalid_api_key")

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        return {"object": "list", "data": [{"id": service.model_id, "object": "model", "created": 0,
                                            "owned_by": "relayllm"}]}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Any:
        authorize(request)
        settings = service.check(body)
        if body.stream:
            return StreamingResponse(stream_chunks(service, body, settings), media_type="text/event-stream")
        return await complete(service, body, settings)

    @app.get("/health")
    async def health() -> dict:
        engine = service.engine
        if hasattr(engine, "check_cloud"):  # a cloud that was down at start: try it when the backoff allows
            await asyncio.to_thread(engine.check_cloud)
        state = getattr(engine, "cloud_state", "unknown")
        return {"status": "ok", "cloud": state, "cloud_note": getattr(engine, "cloud_note", "")}

    return app


def register(sub: argparse._SubParsersAction) -> None:
    from edge.cli import add_config_args

    edge = sub.add_parser("edge", help="the edge as a service (OpenAI-compatible API)")
    edge_sub = edge.add_subparsers(dest="edge_command", required=True, metavar="ACTION")
    serve = edge_sub.add_parser("serve", help="serve /v1/chat/completions and /v1/models over the relay")
    add_config_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--api-key", help="key clients must send (default: RELAY_EDGE_API_KEY; none: open)")
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from common.errors import UserError
    from common.secrets import env_secret
    from common.steps import Steps
    from edge.app import open_engine
    from edge.cli import config_from_args
    from models.supply import cache_root

    api_key = args.api_key or env_secret("RELAY_EDGE_API_KEY")
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        raise UserError(f"refusing to serve on {args.host} without an API key: set RELAY_EDGE_API_KEY or --api-key")
    config = config_from_args(args)
    steps = Steps.to_log(cache_root(config.models.cache_dir) / "logs" / "setup.log")
    with open_engine(config, say=steps.say, steps=steps) as engine:
        steps.finish()
        model_id = f"relayllm/{config.models.pair}"
        service = RelayService(engine, config.relay, model_id, api_key)
        print(f"OpenAI-compatible API on http://{args.host}:{args.port}/v1 (model {model_id})", flush=True)
        uvicorn.run(make_app(service), host=args.host, port=args.port, log_level="warning")
    return 0
