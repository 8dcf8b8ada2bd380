"""The edge process's one typed config: YAML < env (RELAY_EDGE__...) < `--set key=value` flags.

With no file at all it runs the embedded default: the bundled model pair, the SLM on
onnxruntime, and a local cloud server on loopback started as a child process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from common.config import load_config
from edge.cost import PriceTable
from edge.relay.settings import Policy, RelaySettings


class ModelsSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pair: str = "qwen2.5-coder-0.5b-1.5b"
    """A pair name from models/registry.yaml (`relay models list`)."""
    slm: str | None = None
    """Override the pair's SLM: a model name, hub id or HF directory."""
    llm: str | None = None
    """Override the pair's LLM (used by the embedded cloud only)."""
    slm_onnx_dir: Path | None = None
    """Use this exported ONNX directory as is (skips export)."""
    call_head: Path | None = None
    """Call head for the `head` policy (default: the pair's, when the SLM is the pair's own)."""
    quant: Literal["int8", "int8-dynamic", "fp32"] = "int8"
    """Which ONNX export of the SLM to run (see edge/export.py for the int8 schemes)."""
    cache_dir: Path | None = None
    """Model cache root (default: the user cache dir, or RELAY_CACHE_DIR)."""
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    """onnxruntime execution provider: auto takes CUDA when available."""
    threads: int | None = Field(None, ge=1)
    """onnxruntime intra-op threads (default: all cores)."""
    spin_threads: bool = True
    """Let idle onnxruntime threads spin (faster decode, more CPU burnt while waiting)."""


class CloudSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = "embedded"
    """host:port of a remote cloud; "embedded" starts a local one on loopback; "off" runs SLM-only."""
    token: SecretStr | None = None
    """Bearer token for a remote cloud (or RELAY_CLOUD_TOKEN)."""
    tls_ca_file: Path | None = None
    """CA certificate to verify a TLS cloud; unset means plaintext."""
    timeout_s: float = Field(300.0, gt=0)
    """Deadline of one relay (the cloud LLM on a CPU is slow)."""
    connect_timeout_s: float = Field(15.0, gt=0)
    stateless: bool = False
    """Re-send the whole context on every relay instead of using a server session (for comparison)."""
    embedded_device: Literal["auto", "cpu", "cuda"] = "auto"
    embedded_startup_timeout_s: float = Field(900.0, gt=0)
    """How long to wait for the embedded cloud to load its model (first run converts it)."""


class EdgeRelaySettings(RelaySettings):
    """RelaySettings with the edge's defaults: the entropy controller, because the bundled SLM is not
    RelayLLM-trained (it never writes `<call>N</call>`); set `policy: learned` with a trained SLM.
    A partial `relay:` section in YAML keeps these defaults for the fields it does not name."""

    policy: Policy = "entropy"
    entropy_tau: float = Field(0.6, gt=0, lt=1)


class EdgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: ModelsSection = ModelsSection()
    cloud: CloudSection = CloudSection()
    relay: EdgeRelaySettings = EdgeRelaySettings()
    """Per-answer relay settings (the chat app can change them at run time)."""
    prices: PriceTable = PriceTable()
    history_path: Path | None = None
    """SQLite file of the chat history (default: in the user data dir)."""


def load_edge_config(path: str | Path | None = None, overrides: list[str] | None = None) -> EdgeConfig:
    return load_config(EdgeConfig, path, env_prefix="RELAY_EDGE__", overrides=overrides or [])
