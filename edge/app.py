"""Assembling a ready RelayEngine from an EdgeConfig: models, SLM session, cloud link.

`open_engine(config)` is what every edge command uses. With `cloud.address: embedded` it starts
`relay cloud serve` as a child process on a free loopback port (with a one-time random bearer
token) and stops it on exit. A cloud that cannot be reached leaves the engine offline (SLM only)
with the reason in `engine.cloud_note`, rather than failing the whole app.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.ready import read_ready_address
from common.secrets import env_secret
from common.steps import Steps
from edge.cloud_link import CloudError, CloudLink
from edge.config import EdgeConfig
from edge.relay.call_head import CallHead
from edge.relay.driver import RelayEngine
from edge.runtime import OnnxSlm
from edge.vocab import Vocab

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelDirs:
    slm_onnx: Path
    llm: Path | None
    call_head: Path | None = None


def resolve_models(config: EdgeConfig, need_llm: bool, steps: Steps | None = None) -> ModelDirs:
    m = config.models
    if m.slm_onnx_dir is not None and not need_llm:
        return ModelDirs(m.slm_onnx_dir, None, m.call_head)
    from edge.export import ensure_onnx
    from models.identity import check_pair
    from models.registry import load_registry
    from models.supply import cache_root, ensure_model

    _, pair = load_registry().pair(m.pair)
    slm_dir = ensure_model(m.slm or pair.slm, cache_dir=m.cache_dir, steps=steps)
    llm_dir = None
    if need_llm:  # an edge with a remote cloud never fetches the LLM
        llm_dir = ensure_model(m.llm or pair.llm, cache_dir=m.cache_dir, steps=steps)
        check_pair(slm_dir, llm_dir)
    onnx = m.slm_onnx_dir or ensure_onnx(slm_dir, cache_root(m.cache_dir), m.quant, steps=steps)
    # The pair's head was fitted on the pair's SLM: another SLM gets none unless one is named.
    own_slm = m.slm is None and m.slm_onnx_dir is None
    return ModelDirs(onnx, llm_dir, m.call_head or (pair.call_head if own_slm else None))


@contextlib.contextmanager
def open_engine(config: EdgeConfig, *, say=lambda msg: None, steps: Steps | None = None) -> Iterator[RelayEngine]:
    """A RelayEngine for `config`; the embedded cloud (if any) lives as long as the context.
    `steps` reports model preparation and the cloud's start one line each (`common.steps`)."""
    steps = steps or Steps()
    address = config.cloud.address
    embedded = address == "embedded"
    dirs = resolve_models(config, need_llm=embedded, steps=steps)
    m = config.models
    slm = OnnxSlm.load(dirs.slm_onnx, provider=m.provider, threads=m.threads, spin=m.spin_threads)
    vocab = Vocab.load(dirs.slm_onnx, vocab_size=slm.vocab_size)
    say(f"SLM on {slm.provider}")
    head = CallHead.load(dirs.call_head) if dirs.call_head is not None else None
    if head is not None and len(head.direction) != slm.vocab_size:
        raise UserError(f"call head {dirs.call_head} is for another SLM (vocabulary {len(head.direction)}, "
                        f"this SLM's {slm.vocab_size})")  # fmt: skip
    with contextlib.ExitStack() as stack:
        token = config.cloud.token.get_secret_value() if config.cloud.token else env_secret("RELAY_CLOUD_TOKEN")
        state = "connected"
        if embedded:
            token = secrets.token_urlsafe(24)
            with steps.step(f"start the local cloud: load {dirs.llm.name if dirs.llm else 'the LLM'}") as step:
                address = stack.enter_context(embedded_cloud(config, dirs.llm, token))
                step.detail = f"on {address} (log: {_log_path(config)})"
            state = "embedded"
        link, note = None, ""
        if address != "off":
            link, note = _connect(config, address, token, dirs.slm_onnx, vocab.eos_ids)
            if link is not None:
                stack.callback(link.close)
                state = state if link.checked else "reconnecting"
        engine = RelayEngine(slm, vocab, link, config.prices, cloud_state=state if link else "offline", call_head=head)
        engine.cloud_address = None if address == "off" else address
        engine.cloud_note = note
        yield engine


def _connect(
    config: EdgeConfig, address: str, token: str | None, slm_dir: Path, eos_ids: tuple[int, ...]
) -> tuple[CloudLink | None, str]:
    from models.identity import tokenizer_sha256

    c = config.cloud
    link = CloudLink(
        address,
        token=token,
        tls_ca_file=str(c.tls_ca_file) if c.tls_ca_file else None,
        timeout_s=c.timeout_s,
        stateless=c.stateless,
    )
    try:
        link.connect(tokenizer_sha256(slm_dir), timeout_s=c.connect_timeout_s, eos_ids=eos_ids)
    except CloudError as exc:
        if exc.transient:  # not up yet, or down for now: answer SLM-only and retry with a backoff
            log.warning("cloud not reachable yet (answers are SLM-only until it is): %s", exc)
            return link, str(exc)
        link.close()
        log.warning("cloud offline: %s", exc)
        return None, str(exc)
    return link, ""


@contextlib.contextmanager
def embedded_cloud(config: EdgeConfig, llm_dir: Path | None, token: str) -> Iterator[str]:
    """Run `relay cloud serve` on a free loopback port; yield its address; stop it afterwards."""
    if llm_dir is None:
        raise UserError("the embedded cloud needs an LLM directory")
    cmd = [
        sys.executable, "-m", "relaycli.main", "cloud", "serve",
        "--host", "127.0.0.1", "--port", "0", "--llm", str(llm_dir),
        "--set", f"device={config.cloud.embedded_device}", "--set", f"parent_pid={os.getpid()}",
    ]  # fmt: skip
    env = {**os.environ, "RELAY_CLOUD_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    log_file = _log_path(config)
    with open(log_file, "ab") as err:
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
    try:
        yield _wait_ready(child, config.cloud.embedded_startup_timeout_s, log_file)
    finally:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()


def _wait_ready(child: subprocess.Popen, timeout_s: float, log_file: Path) -> str:
    address = read_ready_address(child, timeout_s)
    if address is None:
        child.kill()
        why = f"exited with code {child.poll()}" if child.poll() is not None else f"not ready in {timeout_s:.0f} s"
        raise UserError(f"the embedded cloud {why} (log: {log_file})")
    return address


def _log_path(config: EdgeConfig) -> Path:
    from models.supply import cache_root

    root = cache_root(config.models.cache_dir) / "logs"
    root.mkdir(parents=True, exist_ok=True)
    return root / "embedded-cloud.log"
