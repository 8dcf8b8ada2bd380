"""Configs (YAML < env < flags, typos fail) and the CLI's one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cloud.config import load_cloud_config
from common.errors import UserError
from edge.config import load_edge_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_load() -> None:
    assert load_edge_config(ROOT / "configs/edge.yaml").cloud.address == "embedded"
    assert load_cloud_config(ROOT / "configs/cloud.yaml").port == 50051


def test_precedence_yaml_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text("relay: {max_relays: 2, fixed_n: 8}\ncloud: {address: a:1}\n")
    monkeypatch.setenv("RELAY_EDGE__RELAY__MAX_RELAYS", "3")
    loaded = load_edge_config(config, ["cloud.address=off", "relay.policy=entropy"])
    assert loaded.relay.max_relays == 3 and loaded.relay.fixed_n == 8
    assert loaded.cloud.address == "off"  # "off" stays a string, not YAML's boolean
    assert loaded.relay.policy == "entropy"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("relay: {max_relayz: 2}\n", "relay.max_relayz"),  # typo in a key
        ("relay: {policy: sometimes}\n", "relay.policy"),  # unknown policy
        ("relay: {max_relays: -1}\n", "relay.max_relays"),  # out of range
        ("relay: [1, 2\n", "not valid YAML"),  # broken YAML
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, yaml_text: str, message: str) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text(yaml_text)
    with pytest.raises(UserError, match=message):
        load_edge_config(config)


def test_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_CLOUD_TOKEN", "t0k")
    assert load_cloud_config().auth_token.get_secret_value() == "t0k"


def relay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relaycli.main", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ask", "   "], "error: the question is empty"),
        (["ask", "hi", "--config", "missing.yaml"], "error: config file not found"),
        (["ask", "hi", "--set", "relay.policy=sometimes"], "error: invalid config at relay.policy"),
        (["models", "pull", "no-such-pair", "--no-onnx"], "error: "),
        (["eval", "run", "--benchmark", "aime"], "error: unknown benchmark"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = relay(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_partial_relay_section_keeps_the_edge_defaults(tmp_path: Path) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text("relay: {max_relays: 2}\n")
    relay = load_edge_config(config).relay
    assert (relay.policy, relay.entropy_tau, relay.max_relays) == ("entropy", 0.6, 2)


@pytest.mark.parametrize(
    ("overrides", "mode"),
    [
        (["host=127.0.0.1"], "loopback only"),
        (["host=::1"], "loopback only"),
        (["host=0.0.0.0", "auth_token=s3cret"], "network (0.0.0.0), bearer token"),
        (["host=0.0.0.0", "allow_insecure=true"], "INSECURE"),
    ],
)
def test_cloud_security_mode(overrides: list[str], mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from cloud.config import security_mode

    monkeypatch.delenv("RELAY_CLOUD_TOKEN", raising=False)
    assert security_mode(load_cloud_config(None, overrides)).startswith(mode)


def test_open_cloud_on_the_network_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "RELAY_CACHE_DIR": str(tmp_path), "HOME": str(tmp_path)}
    # A model that does not exist: reaching the model load would fail differently (and slowly).
    cmd = [
        sys.executable,
        "-m",
        "relaycli.main",
        "cloud",
        "serve",
        "--host",
        "0.0.0.0",
        "--llm",
        str(tmp_path / "none"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: refusing to serve on 0.0.0.0 without a bearer token")
