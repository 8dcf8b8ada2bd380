"""The edge as a service: an OpenAI-compatible HTTP API that answers through the relay.

`POST /v1/chat/completions` (streaming SSE or not) and `GET /v1/models`, so an existing OpenAI
client, editor plug-in or script uses the relay unchanged. Every response says what the relay did:

- `usage` has the standard token counts plus `relay` (LLM-token share, relays, bytes, edge and
  cloud ms, money and the LLM-only counterfactual);
- the response (and the last stream chunk) has an extension field `relay` with the whole cost
  record and the answer's spans (which text the SLM wrote and which the cloud LLM wrote);
- each streamed content chunk says its `relay.source` ("slm" or "llm").

A request may carry `relay` settings (policy, call_bias, max_relays, ...: `RelaySettings`) on top
of the service's. The `<call>N</call>` commands never reach the client. One engine answers one
request at a time (the SLM's KV cache is one conversation); others wait their turn.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import UserError
from edge.events import AnswerFinished, RelayEvent, TokenEvent
from edge.relay.driver import ChatEngine
from edge.relay.settings import RelaySettings

FINISH = {"eos": "stop", "llm_eos": "stop", "max_tokens": "length", "context_full": "length", "cancelled": "stop"}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The OpenAI fields the relay honours; others (logit_bias, tools, ...) are refused by name."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    user: str | None = None
    relay: dict[str, Any] | None = None
    """Extension: RelaySettings fields for this request (policy, call_bias, max_relays, ...)."""

    def settings(self, base: RelaySettings) -> RelaySettings:
        update = dict(self.relay or {})
        limit = self.max_completion_tokens or self.max_tokens
        for key, value in (("max_new_tokens", limit), ("temperature", self.temperature),
                           ("top_p", self.top_p), ("seed", self.seed)):  # fmt: skip
            if value is not None:
                update[key] = value
        return RelaySettings.model_validate(base.model_dump() | update)

    def messages_for_engine(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.code}}


@dataclass
class Answer:
    """What the worker thread produced: events as they come, then the final record."""

    queue: asyncio.Queue
    cancel: threading.Event = field(default_factory=threading.Event)


def relay_usage(record: Any) -> dict[str, Any]:
    return {
        "llm_share": record.llm_share,
        "relays": len(record.relays),
        "llm_tokens": record.llm_tokens,
        "slm_tokens": record.slm_tokens,
        "bytes_up": record.bytes_up,
        "bytes_down": record.bytes_down,
        "edge_ms": record.edge_ms,
        "cloud_ms": record.cloud_ms,
        "money": record.money,
        "money_llm_only": record.money_llm_only,
        "fallbacks": list(record.fallbacks),
    }


def usage_of(record: Any) -> dict[str, Any]:
    completion = record.slm_tokens + record.llm_tokens
    return {
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": record.prompt_tokens + completion,
        "relay": relay_usage(record),
    }


def visible(event: RelayEvent) -> TokenEvent | None:
    """A token the client sees: text, and not part of a `<call>N</call>` command."""
    if isinstance(event, TokenEvent) and event.text and not event.in_command:
        return event
    return None


def merge_span(spans: list[dict[str, str]], source: str, text: str) -> None:
    if spans and spans[-1]["source"] == source:
        spans[-1]["text"] += text
    else:
        spans.append({"source": source, "text": text})


class RelayService:
    """The API's state: one engine, its base settings and names; the routes live in `make_app`."""

    def __init__(self, engine: ChatEngine, base: RelaySettings, model_id: str, api_key: str | None = None):
        self.engine, self.base, self.model_id, self.api_key = engine, base, model_id, api_key

    def check(self, request: ChatRequest) -> RelaySettings:
        if request.model != self.model_id:
            raise ApiError(404, f"model {request.model!r} does not exist; this service serves {self.model_id!r}",
                           code="model_not_found")  # fmt: skip
        try:
            settings = request.settings(self.base)
        except ValidationError as exc:
            raise ApiError(400, f"bad relay settings: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
        prompt = self.engine.count_tokens(request.messages_for_engine())
        if prompt >= self.engine.max_context:
            limit = self.engine.max_context
            raise ApiError(400, f"the conversation is {prompt} tokens; the SLM's context holds {limit}",
                           code="context_length_exceeded")  # fmt: skip
        return settings

    def start(self, request: ChatRequest, settings: RelaySettings) -> Answer:
        """Run the answer in a worker thread; its events arrive on the returned queue."""
        loop = asyncio.get_running_loop()
        answer = Answer(asyncio.Queue())

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(answer.queue.put_nowait, item)

        def work() -> None:
            try:
                stream = self.engine.answer(request.messages_for_engine(), settings, answer.cancel)
                for event in stream:
                    put(event)
                put(("done", stream.record))
            except UserError as exc:
                put(("error", str(exc)))
            except Exception as exc:  # noqa: BLE001  (reported to the client, the service goes on)
                put(("error", f"{type(exc).__name__}: {exc}"))

        threading.Thread(target=work, daemon=True, name="relay-answer").start()
        return answer


async def events_of(answer: Answer) -> AsyncIterator[RelayEvent | tuple[str, Any]]:
    while True:
        item = await answer.queue.get()
        yield item
        if isinstance(item, tuple):
            return


async def complete(service: RelayService, request: ChatRequest, settings: RelaySettings) -> dict[str, Any]:
    answer = service.start(request, settings)
    text, spans, finish, record = [], [], "stop", None
    async for item in events_of(answer):
        if isinstance(item, tuple):
            if item[0] == "error":
                raise ApiError(500, item[1], kind="server_error")
            record = item[1]
        elif isinstance(item, AnswerFinished):
            finish = FINISH.get(item.reason, "stop")
        elif (token := visible(item)) is not None:
            text.append(token.text)
            merge_span(spans, token.source, token.text)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": service.model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)}, "finish_reason": finish}],
        "usage": usage_of(record),
        "relay": {"cost": record.to_dict(), "spans": spans},
    }


async def stream_chunks(service: RelayService, request: ChatRequest, settings: RelaySettings) -> AsyncIterator[str]:
    answer = service.start(request, settings)
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": service.model_id}  # fmt: skip

    def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
        body = base | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]} | extra
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    spans: list[dict[str, str]] = []
    finish = "stop"
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for item in events_of(answer):
            if isinstance(item, tuple):
                if item[0] == "error":
                    error = ApiError(500, item[1], kind="server_error")
                    yield f"data: {json.dumps(error.body())}\n\n"
                    return
                record = item[1]
                yield chunk({}, finish, relay={"cost": record.to_dict(), "spans": spans})
                if request.stream_options and request.stream_options.include_usage:
                    yield f"data: {json.dumps(base | {'choices': [], 'usage': usage_of(record)})}\n\n"
                yield "data: [DONE]\n\n"
                return
            if isinstance(item, AnswerFinished):
                finish = FINISH.get(item.reason, "stop")
            elif (token := visible(item)) is not None:
                merge_span(spans, token.source, token.text)
                yield chunk({"content": token.text}, relay={"source": token.source})
    finally:
        answer.cancel.set()  # the client went away mid-answer: stop the SLM and the cloud call
