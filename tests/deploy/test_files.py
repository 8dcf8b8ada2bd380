"""The deployment files, read by real parsers in every run: podman-compose's own compose loader
(with its variable interpolation and override merging) and dockerfile-parse. Each command,
variable and path they name must mean something to the code they start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cloud.config import load_cloud_config, security_mode
from edge.config import load_edge_config
from relaycli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]


def compose_config(*files: str, env: dict[str, str] | None = None) -> dict:
    """The stack as podman-compose resolves it (interpolated, overrides merged)."""
    args = [arg for name in files for arg in ("-f", str(ROOT / name))]
    out = subprocess.run(
        [sys.executable, "-m", "podman_compose", *args, "config"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )  # fmt: skip
    return yaml.safe_load(out.stdout)


@pytest.fixture(scope="module")
def stack() -> dict:
    return compose_config("docker-compose.yml")


def relay_args(command: list[str]):
    assert command[0] == "relay", command
    return build_parser().parse_args(command[1:])


def test_both_tiers_run_the_relay_cli_with_settings_the_configs_accept(stack, monkeypatch, tmp_path) -> None:
    cloud, edge = stack["services"]["cloud"], stack["services"]["edge"]
    args = relay_args(cloud["command"])
    assert (args.command, args.cloud_command) == ("cloud", "serve")
    config = load_cloud_config(ROOT / "configs" / str(args.config).removeprefix("/app/configs/"), args.set)
    assert config.llm == "qwen2.5-coder-1.5b-instruct" and config.host == "0.0.0.0"
    assert str(config.tls.cert_file) == "/certs/server.pem"
    # Without its token the cloud refuses to serve on 0.0.0.0; with the secret file it serves.
    from common.errors import UserError

    monkeypatch.delenv("RELAY_CLOUD_TOKEN", raising=False)
    with pytest.raises(UserError, match="without a bearer token"):
        security_mode(config)
    token = tmp_path / "relay_token"
    token.write_text("t0ken\n")
    monkeypatch.setenv("RELAY_CLOUD_TOKEN_FILE", str(token))
    served = load_cloud_config(ROOT / "configs" / "cloud.yaml", args.set)
    assert served.auth_token.get_secret_value() == "t0ken" and "bearer token" in security_mode(served)

    serve = relay_args(edge["command"])
    assert (serve.command, serve.edge_command, serve.host) == ("edge", "serve", "0.0.0.0")
    for key, value in edge["environment"].items():
        monkeypatch.setenv(key, str(value))
    edge_config = load_edge_config(None, [])
    assert edge_config.cloud.address == "cloud:50051"
    assert str(edge_config.cloud.tls_ca_file) == "/certs/ca.pem"


def test_healthcheck_is_the_grpc_health_command_against_the_served_tls(stack) -> None:
    check = stack["services"]["cloud"]["healthcheck"]["test"]
    assert check[0] == "CMD"
    args = relay_args(check[1:])
    assert (args.cloud_command, args.address, str(args.tls_ca)) == ("health", "localhost:50051", "/certs/ca.pem")
    assert "condition" in stack["services"]["edge"]["depends_on"]["cloud"]


def test_volumes_secrets_and_ports_line_up_with_the_image(stack) -> None:
    from dockerfile_parse import DockerfileParser

    dockerfile = DockerfileParser(str(ROOT / "Dockerfile"))
    env = dockerfile.envs
    assert dockerfile.baseimage == "python:3.11-slim-bookworm"  # the default of ARG BASE_IMAGE
    exposed = {int(p) for i in dockerfile.structure if i["instruction"] == "EXPOSE" for p in i["value"].split()}
    for name in ("cloud", "edge"):
        service = stack["services"][name]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert mounts[env["RELAY_CACHE_DIR"]] == "models", "one model cache volume for both tiers"
        for secret in service["secrets"]:
            assert secret in stack["secrets"]
        for port in service["ports"]:
            assert int(port.rsplit(":", 1)[1]) in exposed
    assert stack["services"]["edge"]["ports"][0].startswith("127.0.0.1:"), "the edge API stays on loopback"
    for instruction in dockerfile.structure:
        if instruction["instruction"] == "COPY":
            *sources, _ = instruction["value"].split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: missing from the build context"


def test_environment_overrides_reach_the_services() -> None:
    stack = compose_config("docker-compose.yml", env={"RELAY_CLOUD_ADDRESS": "gpu-box:50051", "RELAY_MODELS": "/m"})
    edge = stack["services"]["edge"]
    assert edge["environment"]["RELAY_EDGE__CLOUD__ADDRESS"] == "gpu-box:50051"
    assert "/m:/models" in edge["volumes"]


def test_gpu_override_runs_vllm_on_a_reserved_gpu() -> None:
    stack = compose_config("docker-compose.yml", "docker-compose.gpu.yml")
    cloud = stack["services"]["cloud"]
    args = relay_args(cloud["command"])
    assert args.engine == "vllm"
    assert load_cloud_config(ROOT / "configs" / "cloud.yaml", args.set + ["engine=vllm"]).engine == "vllm"
    devices = cloud["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "ENGINE=vllm" in cloud["build"]["args"]
    assert stack["services"]["edge"]["command"] == compose_config("docker-compose.yml")["services"]["edge"]["command"]


def test_dockerfile_installs_what_the_edge_and_cloud_import() -> None:
    """The image installs pyproject's base + edge + cloud + export extras (model supply needs the
    exporter); training-only packages stay out."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (ROOT / "Dockerfile").read_text()
    assert "o['edge'] + o['cloud'] + o['export']" in text
    export = " ".join(project["optional-dependencies"]["export"])
    assert "optimum-onnx" in export and "peft" in export  # `relay models pull` merges and exports
