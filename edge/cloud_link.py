"""The edge's gRPC client for the cloud LLM: sessions, delta upload, transparent full re-send.

The link remembers exactly which token ids its session holds on the server. A relay sends only
the ids the server has not seen (`delta_ids`) when the new context extends them; otherwise, or
when the server answers FAILED_PRECONDITION (session expired, evicted, server restarted, context
out of step), it opens a fresh session and re-sends the whole context, once, transparently.

Bytes are counted as the serialized protobuf messages plus gRPC's 5-byte length prefix per
message (HTTP/2 frame headers and call metadata are not included).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import grpc

from common.wire import pb, pb_grpc

log = logging.getLogger(__name__)
GRPC_FRAME_BYTES = 5
_FINISH = {pb.FINISH_REASON_LENGTH: "length", pb.FINISH_REASON_EOS: "eos", pb.FINISH_REASON_ABORT: "abort"}


class CloudError(Exception):
    """The cloud could not serve a relay; the message is one line for the user/record.

    `transient`: worth retrying later (unreachable, timed out, overloaded, a dropped stream);
    otherwise permanent (auth, tokenizer or protocol mismatch, garbage from the server)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# gRPC's own reconnect backoff grows to 120 s; a restarted cloud should be found within seconds.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
)

TRANSIENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
     grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL}
)  # fmt: skip


@dataclass
class RelayOutcome:
    finish: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    server_ms: float = 0.0
    round_trip_ms: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    resent_full_context: bool = False
    tokens: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


class CloudLink:
    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls_ca_file: str | None = None,
        timeout_s: float = 120.0,
        stateless: bool = False,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        """Deadline floor of one relay; longer relays get more (see `deadline_for`)."""
        self.stateless = stateless
        self.per_token_s = 1.0
        """Measured server time per LLM token (moving average; starts conservative)."""
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._root_certificates = None
        if tls_ca_file:
            with open(tls_ca_file, "rb") as fh:
                self._root_certificates = fh.read()
        self._open_channel()
        self.info: object | None = None
        self.last = RelayOutcome()
        self._tokenizer_sha256 = ""
        self._connect_timeout_s = 10.0
        self._eos_ids: tuple[int, ...] = ()
        self._consumer_s = 0.0
        self._session_id = ""
        self._session_ids: list[int] = []
        self._call = None  # the Relay call in flight, so another thread can cancel it

    # -- setup ----------------------------------------------------------------------------------

    def connect(
        self, tokenizer_sha256: str, timeout_s: float = 10.0, eos_ids: Iterable[int] = (), *, wait: bool = True
    ) -> object:
        """Fetch model info and check the tokenizer (and, given the edge's `eos_ids`, that every
        token the cloud stops on is one the edge knows as an end); CloudError on a mismatch.
        `wait`: wait up to `timeout_s` for an unreachable server; off, fail at once (a retry)."""
        # Kept for `reconnect`, which repeats these checks.
        self._tokenizer_sha256, self._connect_timeout_s, self._eos_ids = tokenizer_sha256, timeout_s, tuple(eos_ids)
        try:
            info = self._stub.GetModelInfo(
                pb.GetModelInfoRequest(), timeout=timeout_s, metadata=self._metadata, wait_for_ready=wait
            )
        except grpc.RpcError as exc:
            if wait and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # waited for a server that never came
                raise self._why_unreachable(timeout_s) from None
            raise _cloud_error(exc, self.address) from None
        if tokenizer_sha256 and info.tokenizer_sha256 != tokenizer_sha256:
            raise CloudError(
                f"cloud model {info.model_id} uses a different tokenizer "
                f"({info.tokenizer_sha256[:12]} vs local {tokenizer_sha256[:12]}): refusing to relay"
            )
        edge_eos = set(self._eos_ids)
        if edge_eos and not set(info.eos_token_ids) <= edge_eos:
            raise CloudError(
                f"cloud model {info.model_id} ends answers on ids {sorted(info.eos_token_ids)}, the edge on "
                f"{sorted(edge_eos)}: refusing to relay"
            )
        self.info = info
        return info

    def _why_unreachable(self, waited_s: float) -> CloudError:
        """After waiting in vain, one call that fails fast names the cause (refused, DNS, TLS)."""
        try:
            self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=2, metadata=self._metadata)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return _cloud_error(exc, self.address)
        return CloudError(f"cloud at {self.address} unreachable for {waited_s:g} s", transient=True)

    @property
    def checked(self) -> bool:
        """The server's model info was fetched and matched (a link made while the cloud was
        unreachable is not, until `reconnect` succeeds)."""
        return self.info is not None

    def reconnect(self) -> object:
        """Repeat the first `connect` (same checks) on a fresh channel, without waiting for an
        unreachable server (the old channel may sit in gRPC's own reconnect backoff)."""
        self._channel.close()
        self._open_channel()
        return self.connect(self._tokenizer_sha256, self._connect_timeout_s, self._eos_ids, wait=False)

    def _open_channel(self) -> None:
        if self._root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=self._root_certificates)
            self._channel = grpc.secure_channel(self.address, creds, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.RelayServiceStub(self._channel)

    def close(self) -> None:
        self._close_session()
        self._channel.close()

    def _close_session(self) -> None:
        """Free the server's session (best effort: the server's TTL drops it anyway)."""
        if self._session_id:
            try:
                self._stub.CloseSession(
                    pb.CloseSessionRequest(session_id=self._session_id), timeout=2, metadata=self._metadata
                )
            except grpc.RpcError:
                pass
        self._forget_session()

    @property
    def max_n(self) -> int | None:
        """The server's cap on N per relay (ModelInfo), once connected."""
        cap = getattr(self.info, "max_new_tokens_cap", 0)
        return int(cap) if cap else None

    @property
    def max_context(self) -> int | None:
        limit = getattr(self.info, "max_context", 0)
        return int(limit) if limit else None

    def deadline_for(self, new_context: int, n: int) -> float:
        """Seconds one relay may take: its prefill and N tokens at the measured per-token time,
        three times over for slack, never under `timeout_s`."""
        estimate = (new_context / 50 + n) * self.per_token_s
        return max(self.timeout_s, 3 * estimate)

    # -- relays ---------------------------------------------------------------------------------

    def relay(self, context: list[int], n: int, sampling: Sampling) -> Iterator[list[int]]:
        """Stream the LLM's tokens after `context`; the outcome is in `self.last`."""
        self.last = RelayOutcome()
        started = time.perf_counter()
        self._consumer_s = 0.0  # time the caller spent between our yields: not part of the relay
        try:
            yield from self._relay_once(context, n, sampling, allow_resend=not self.stateless)
        finally:
            self.last.round_trip_ms = (time.perf_counter() - started - self._consumer_s) * 1e3

    def _relay_once(self, context: list[int], n: int, sampling: Sampling, allow_resend: bool) -> Iterator[list[int]]:
        request = self._request(context, n, sampling)
        self.last.bytes_up += request.ByteSize() + GRPC_FRAME_BYTES
        deadline = self.deadline_for(len(request.delta_ids), n)
        call = self._stub.Relay(request, timeout=deadline, metadata=self._metadata)
        self._call = call
        received = False
        try:
            for chunk in call:
                self.last.bytes_down += chunk.ByteSize() + GRPC_FRAME_BYTES
                if chunk.HasField("tokens"):
                    ids = self._check_ids(list(chunk.tokens.ids))
                    received = True
                    self.last.tokens += ids
                    paused = time.perf_counter()
                    yield ids
                    self._consumer_s += time.perf_counter() - paused
                elif chunk.HasField("done"):
                    self._finish(chunk.done, context)
                    return
        except grpc.RpcError as exc:
            self._forget_session()
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and allow_resend and not received:
                log.info("cloud session lost (%s); re-sending the whole context", exc.details())
                self.last.resent_full_context = True
                yield from self._relay_once(context, n, sampling, allow_resend=False)
                return
            raise _cloud_error(exc, self.address) from None
        except (GeneratorExit, CloudError):
            call.cancel()
            self._forget_session()
            raise
        self._forget_session()
        raise CloudError("cloud stream ended without a final message", transient=True)

    def cancel_current(self) -> None:
        """Cancel the relay in flight, even while it waits for the LLM's prefill (thread-safe)."""
        call = self._call
        if call is not None:
            call.cancel()

    def _request(self, context: list[int], n: int, sampling: Sampling) -> object:
        params = pb.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.seed is not None:
            params.seed = sampling.seed
        if self.stateless:
            return pb.RelayRequest(delta_ids=context, max_new_tokens=n, sampling=params)
        held = self._session_ids
        if not self._session_id or context[: len(held)] != held:
            self._open_session()
            held = []
        return pb.RelayRequest(
            session_id=self._session_id,
            context_len=len(held),
            delta_ids=context[len(held) :],
            max_new_tokens=n,
            sampling=params,
        )

    def _open_session(self) -> None:
        if self._session_id:
            self._close_session()
        try:
            response = self._stub.OpenSession(
                pb.OpenSessionRequest(tokenizer_sha256=self._tokenizer_sha256),
                timeout=self.timeout_s,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise _cloud_error(exc, self.address) from None
        self._session_id, self._session_ids = response.session_id, []

    def _finish(self, done: object, context: list[int]) -> None:
        out = self.last
        out.finish = _FINISH.get(done.finish_reason, "abort")
        out.prompt_tokens = done.usage.prompt_tokens
        out.cached_tokens = done.usage.cached_tokens
        out.completion_tokens = done.usage.completion_tokens
        out.server_ms = done.timings.total_ms
        if out.completion_tokens:
            measured = done.timings.total_ms / 1e3 / out.completion_tokens
            self.per_token_s = 0.7 * self.per_token_s + 0.3 * measured
        if not self.stateless:
            self._session_ids = list(context) + out.tokens
            if done.context_len != len(self._session_ids):
                log.warning("cloud context %d != local %d; resetting", done.context_len, len(self._session_ids))
                self._forget_session()

    def _check_ids(self, ids: list[int]) -> list[int]:
        vocab = getattr(self.info, "vocab_size", 0)
        if vocab and any(i >= vocab for i in ids):
            raise CloudError(f"cloud sent a token id outside the vocabulary ({max(ids)} >= {vocab})")
        return ids

    def _forget_session(self) -> None:
        self._session_id, self._session_ids = "", []


def _cloud_error(exc: grpc.RpcError, address: str) -> CloudError:
    return CloudError(_describe(exc, address), transient=exc.code() in TRANSIENT_CODES)


def _describe(exc: grpc.RpcError, address: str) -> str:
    code = exc.code()
    name = code.name if code is not None else "UNKNOWN"
    details = (exc.details() or "").splitlines()[0] if exc.details() else ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cloud at {address} unreachable ({details or name})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"cloud at {address} timed out"
    return f"cloud error {name}: {details}"
