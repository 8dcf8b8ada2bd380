"""The cloud process's one typed config: YAML < env (RELAY_CLOUD__...) < `--set key=value` flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from common.config import load_config


class TlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert_file: Path
    """PEM certificate chain of the server."""
    key_file: Path
    """PEM private key of the server."""


class VllmSection(BaseModel):
    """The vLLM engine's settings (engine: vllm). Defaults suit one box; see docs/SCALING.md."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    prefix_caching: bool = True
    """Reuse the KV of a context's shared prefix across relays (the session's earlier turns)."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs one model is split over (a multi-GPU box)."""
    pipeline_parallel_size: int = Field(1, ge=1)
    """Pipeline stages; with tensor parallelism, how a model spans several nodes."""
    distributed_executor_backend: Literal["mp", "ray"] | None = None
    """mp: processes on this box (vLLM's default); ray: a Ray cluster across nodes."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """Share of GPU memory vLLM may take for weights and KV cache (GPU only; on CPU the KV cache
    size comes from the VLLM_CPU_KVCACHE_SPACE environment variable, in GiB)."""
    max_num_seqs: int = Field(64, ge=1)
    """Requests batched together at most."""
    block_size: int | None = Field(None, ge=1)
    """KV-cache block size in tokens (None: vLLM's default for the device). Prefix caching reuses
    whole blocks only, so smaller blocks reuse more of a session's context between relays."""
    enforce_eager: bool | None = None
    """Skip CUDA-graph capture and compilation. None: on CPU (a faster start, little to gain), not
    on GPU (graphs speed up decoding)."""


class CloudConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    """Interface to bind; 0.0.0.0 in a container."""
    port: int = Field(50051, ge=0, le=65535)
    """gRPC port; 0 picks a free one (printed on the ready line)."""
    engine: Literal["transformers", "vllm"] = "transformers"
    """transformers: one model step at a time, a KV cache per session (the embedded default).
    vllm: continuous batching and prefix caching for many edges (needs `make vllm`)."""
    vllm: VllmSection = VllmSection()
    llm: str = "qwen2.5-coder-1.5b-instruct"
    """LLM: a model name from models/registry.yaml, a Hugging Face hub id, or a local directory."""
    cache_dir: Path | None = None
    """Model cache root (default: the user cache dir, or RELAY_CACHE_DIR)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: bfloat16 on CUDA; on CPU whichever of bfloat16/float32 decodes faster (timed at load)."""
    threads: int | None = Field(None, ge=1)
    """torch intra-op threads on CPU (default: all cores)."""
    max_new_tokens_cap: int = Field(1024, ge=1)
    """Largest N a single relay may ask for; larger requests get INVALID_ARGUMENT."""
    max_context: int | None = Field(None, ge=16)
    """Context limit in tokens (default: the model's max_position_embeddings)."""
    max_sessions: int = Field(64, ge=1)
    """Sessions kept at once; the least recently used one is evicted beyond this."""
    max_kv_bytes: int = Field(4 * 2**30, ge=1)
    """KV-cache memory across sessions; LRU sessions are evicted beyond this."""
    idle_ttl_s: float = Field(600.0, gt=0)
    """A session unused for this long is dropped."""
    auth_token: SecretStr | None = None
    """Bearer token clients must send; also read from RELAY_CLOUD_TOKEN or the file in
    RELAY_CLOUD_TOKEN_FILE (a compose secret). None: no auth."""
    tls: TlsConfig | None = None
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """Prometheus /metrics HTTP port (None: off)."""
    grace_s: float = Field(5.0, ge=0)
    """Seconds running relays get to finish on shutdown."""
    parent_pid: int | None = Field(None, ge=1)
    """Stop when this process is gone (the embedded cloud: its edge). A parent killed outright
    runs no cleanup, and its cloud would otherwise hold the LLM's memory and CPU until found."""
    allow_insecure: bool = False
    """Serve on a non-loopback address without a bearer token. Off: such a start is refused
    before the model loads (an open LLM on the network is rarely what anyone meant)."""

    @model_validator(mode="after")
    def _token_from_env(self) -> CloudConfig:
        from common.secrets import env_secret

        if self.auth_token is None and (token := env_secret("RELAY_CLOUD_TOKEN")):
            self.auth_token = SecretStr(token)
        return self


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def security_mode(config: CloudConfig) -> str:
    """One line on how the server is exposed; raises UserError for an open non-loopback bind."""
    from common.errors import UserError

    auth = "bearer token" if config.auth_token else "no auth"
    tls = "TLS" if config.tls else "plaintext"
    if is_loopback(config.host):
        return f"loopback only ({config.host}), {auth}, {tls}"
    if config.auth_token is None and not config.allow_insecure:
        raise UserError(
            f"refusing to serve on {config.host} without a bearer token: set RELAY_CLOUD_TOKEN (or auth_token), "
            "or pass --insecure if an open LLM on this network is really intended"
        )
    if config.auth_token is None:
        return f"INSECURE: {config.host} with no auth, {tls} (--insecure)"
    return f"network ({config.host}), {auth}, {tls}"


def load_cloud_config(path: str | Path | None = None, overrides: list[str] | None = None) -> CloudConfig:
    return load_config(CloudConfig, path, env_prefix="RELAY_CLOUD__", overrides=overrides or [])
