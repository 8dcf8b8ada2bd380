"""gRPC servicer of `relaywire.v1.RelayService`: pb in, an engine's token stream, pb out.

The servicer keeps each session's token ids and hands the engine (`cloud.engine`: the step engine
over transformers, or vLLM) the whole context per relay. A cancelled or timed-out call stops the
engine at its next token; the session is dropped because its engine state may be half a step
ahead, and the client re-sends its context.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from cloud.config import CloudConfig
from cloud.engine import Engine, GenerateDone, GenerateParams
from cloud.metrics import Metrics
from cloud.sessions import CapacityError, Session, SessionError, SessionStore
from common.wire import pb, pb_grpc

log = logging.getLogger(__name__)
PROTOCOL_VERSION = "relaywire.v1"


class RelayServicer(pb_grpc.RelayServiceServicer):
    def __init__(self, engine: Engine, config: CloudConfig, metrics: Metrics) -> None:
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self.info = engine.info
        self.max_context = min(config.max_context or self.info.max_context, self.info.max_context)
        self.store = SessionStore(
            engine.new_state,
            max_sessions=config.max_sessions,
            max_kv_bytes=config.max_kv_bytes,
            idle_ttl_s=config.idle_ttl_s,
        )
        self._token = config.auth_token.get_secret_value() if config.auth_token else None
        self.on_engine_dead: Callable[[str], None] = lambda why: None
        """Set by the server: turn health NOT_SERVING and stop (the engine cannot recover)."""

    # -- RPCs -------------------------------------------------------------------------------

    async def GetModelInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)
        i = self.info
        return pb.ModelInfo(
            model_id=i.model_id,
            vocab_size=i.vocab_size,
            tokenizer_sha256=i.tokenizer_sha256,
            chat_template_sha256=i.chat_template_sha256,
            max_context=self.max_context,
            eos_token_ids=list(i.eos_ids),
            max_new_tokens_cap=self.config.max_new_tokens_cap,
            device=i.device,
            dtype=i.dtype,
            protocol_version=PROTOCOL_VERSION,
            engine=self.engine.name,
        )

    async def OpenSession(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)
        if request.tokenizer_sha256 and request.tokenizer_sha256 != self.info.tokenizer_sha256:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"tokenizer mismatch: server {self.info.tokenizer_sha256[:12]}, client {request.tokenizer_sha256[:12]}",
            )
        try:
            session = self.store.open()
        except CapacityError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        self._update_gauges()
        return pb.OpenSessionResponse(session_id=session.session_id, idle_ttl_s=int(self.config.idle_ttl_s))

    async def CloseSession(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)
        existed = self.store.close(request.session_id)
        self._update_gauges()
        return pb.CloseSessionResponse(existed=existed)

    async def Relay(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        code, session, generating, completed, reserved = "OK", None, False, False, 0
        arrived = time.perf_counter()
        try:
            await self._authorize(context)
            await self._validate(request, context)
            session = await self._session_for(request, context)
            async with session.lock:
                if session.session_id and session.session_id not in self.store:
                    # Closed (or evicted) while this request waited for the one before it.
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "session was closed")
                await self._check_context(request, session, context)
                need = self._kv_need(session, request)
                try:
                    self.store.reserve(session, need)
                except CapacityError as exc:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                reserved = need
                generating = True
                queue_ms = (time.perf_counter() - arrived) * 1e3  # waiting for this session's last relay
                async for chunk in self._generate(session, request, queue_ms):
                    yield chunk
                completed = True
        except (asyncio.CancelledError, GeneratorExit):
            # A cancelled call arrives as CancelledError or, at a `yield`, as GeneratorExit.
            code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            status = context.code()
            code = status.name if isinstance(status, grpc.StatusCode) else "ABORTED"
            raise
        except Exception as exc:  # a model failure must not take the server down
            if why := self.engine.dead():  # ... unless the model can never run again
                code = "UNAVAILABLE"
                log.error("LLM engine dead: %s", why)
                self.on_engine_dead(why)
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"LLM engine dead: {why}; the service is restarting")
            code = "INTERNAL"
            log.exception("relay failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"LLM step failed: {type(exc).__name__}")
        finally:
            if reserved and session is not None:
                self.store.release(session, reserved)
            if generating and not completed and session is not None and session.session_id:
                # Whatever ended the stream mid-generation, the session's cache may hold a half
                # step: drop it (the client re-sends its context), so nothing leaks either.
                self.store.close(session.session_id)
            self.metrics.requests.labels(code=code).inc()
            self._update_gauges()

    async def _check_context(self, request: Any, session: Session, context: grpc.aio.ServicerContext) -> None:
        if request.session_id and request.context_len != len(session.ids):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"context out of step: server holds {len(session.ids)} tokens, client assumed {request.context_len}",
            )
        if not session.ids and not request.delta_ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "nothing to continue: the session is empty")
        if len(session.ids) + len(request.delta_ids) >= self.max_context:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"context of {len(session.ids) + len(request.delta_ids)} tokens exceeds max context {self.max_context}",
            )

    # -- helpers ----------------------------------------------------------------------------

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if self._token is None:
            return
        metadata = dict(context.invocation_metadata() or ())
        sent = str(metadata.get("authorization", ""))
        if not hmac.compare_digest(sent.encode(), f"Bearer {self._token}".encode()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    async def _validate(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        problem = ""
        cap = self.config.max_new_tokens_cap
        if not 1 <= request.max_new_tokens <= cap:
            problem = f"max_new_tokens must be in 1..{cap}, got {request.max_new_tokens}"
        elif any(i >= self.info.vocab_size for i in request.delta_ids):
            problem = f"token id outside the vocabulary (size {self.info.vocab_size})"
        elif any(i >= self.info.vocab_size for i in request.stop_ids):
            problem = "stop id outside the vocabulary"
        elif not request.session_id and request.context_len:
            problem = "a stateless call (no session_id) must have context_len 0"
        elif not request.session_id and not request.delta_ids:
            problem = "a stateless call needs the whole context in delta_ids"
        elif not 0 <= request.sampling.temperature < math.inf or not 0 <= request.sampling.top_p <= 1:
            problem = "temperature must be finite and >= 0, and top_p in [0, 1]"
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)

    async def _session_for(self, request: Any, context: grpc.aio.ServicerContext) -> Session:
        if not request.session_id:
            return Session("", self.engine.new_state())
        try:
            return self.store.get(request.session_id)
        except SessionError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise  # unreachable: abort raises

    def _kv_need(self, session: Session, request: Any) -> int:
        """KV bytes the session will hold at the end of this relay, at most."""
        tokens = len(session.ids) + len(request.delta_ids) + request.max_new_tokens
        return tokens * self.engine.kv_bytes_per_token()

    async def _generate(self, session: Session, request: Any, queue_ms: float = 0.0) -> AsyncIterator[Any]:
        started = time.perf_counter()
        sampling = request.sampling
        session.ids.extend(request.delta_ids)
        params = GenerateParams(
            max_new_tokens=min(request.max_new_tokens, self.max_context - len(session.ids)),
            temperature=sampling.temperature,
            top_p=sampling.top_p or 1.0,
            top_k=sampling.top_k,
            seed=sampling.seed if sampling.HasField("seed") else None,
            stop_ids=frozenset(request.stop_ids),
            logprobs=request.return_logprobs,
        )
        done: GenerateDone | None = None
        async for out in self.engine.generate(session.state, list(session.ids), params):
            if isinstance(out, GenerateDone):
                done = out
                break
            session.ids.append(out.token_id)
            logprobs = [out.logprob] if out.logprob is not None else []
            yield pb.RelayChunk(tokens=pb.TokenBatch(ids=[out.token_id], logprobs=logprobs))
        assert done is not None, "an engine ends every generation with GenerateDone"
        total_ms = (time.perf_counter() - started) * 1e3
        self._record(session, done, total_ms)
        finish = pb.FINISH_REASON_EOS if done.finish == "eos" else pb.FINISH_REASON_LENGTH
        yield pb.RelayChunk(
            done=pb.RelayDone(
                finish_reason=finish,
                usage=pb.Usage(
                    prompt_tokens=done.prompt_tokens,
                    cached_tokens=done.cached_tokens,
                    completion_tokens=done.completion_tokens,
                ),
                timings=pb.ServerTimings(
                    queue_ms=queue_ms,
                    prefill_ms=done.prefill_ms,
                    decode_ms=total_ms - done.prefill_ms,
                    total_ms=total_ms,
                ),
                context_len=len(session.ids),
            )
        )

    def _record(self, session: Session, done: GenerateDone, total_ms: float) -> None:
        m = self.metrics
        m.prefill_tokens.inc(done.prompt_tokens)
        m.cached_tokens.inc(done.cached_tokens)
        m.generated_tokens.inc(done.completion_tokens)
        m.latency.observe(total_ms / 1e3)
        if session.session_id:
            self.store.update_usage(session, self.engine.state_nbytes(session.state))

    def _update_gauges(self) -> None:
        self.metrics.sessions.set(len(self.store))
        self.metrics.kv_bytes.set(self.store.kv_bytes)
        self.metrics.evictions.set(self.store.evictions)

    def shutdown(self) -> None:
        self.engine.shutdown()
