"""The repo's docker-compose.yml, run for real on podman with the real model pair (bind-mounted
from this machine's model cache): health, TLS, token secret, the edge's OpenAI API relaying, the
cloud killed mid-answer (the answer finishes on the SLM and says so) and restarted (the next answer
relays again). deploy/podman.sh builds the image first (cached layers: fast after the first time).

Skips, with the reason, only where podman cannot run containers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from models.supply import cache_root
from tests.grpc.server_thread import free_port

ROOT = Path(__file__).resolve().parents[2]
PODMAN_SH = ROOT / "deploy" / "podman.sh"
pytestmark = [pytest.mark.compose, pytest.mark.real, pytest.mark.slow]


def podman_problem() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (deploy/podman.sh setup installs it)"
    if os.geteuid() != 0:
        return "the compose test runs rootful podman (bridge networks); run it as root"
    env = {**os.environ, "CONTAINERS_CONF": str(ROOT / "deploy" / "containers.conf")}
    probe = subprocess.run(["podman", "info"], capture_output=True, text=True, env=env, timeout=60)
    if probe.returncode != 0:
        return f"podman cannot run here: {probe.stderr.strip().splitlines()[-1:]}"
    return None


class Stack:
    def __init__(self, project: str, env: dict[str, str], deploy_dir: Path) -> None:
        self.project, self.env, self.deploy_dir = project, env, deploy_dir
        self.cloud_port = int(env["RELAY_CLOUD_PORT"])
        self.edge_url = f"http://127.0.0.1:{env['RELAY_EDGE_PORT']}"

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, env=self.env, timeout=timeout, check=check)

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.run(str(PODMAN_SH), "compose", "-p", self.project, *args, timeout=timeout)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def cloud_serving(self) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        ca = (self.deploy_dir / "certs" / "ca.pem").read_bytes()
        with grpc.secure_channel(f"127.0.0.1:{self.cloud_port}", grpc.ssl_channel_credentials(ca)) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def edge_health(self) -> dict | None:
        import httpx

        try:
            return httpx.get(self.edge_url + "/health", timeout=10).json()
        except (httpx.HTTPError, json.JSONDecodeError):
            return None

    def logs(self) -> str:
        out = []
        for service in ("cloud", "edge"):
            done = self.run("podman", "logs", "--tail", "30", self.container(service), check=False, timeout=30)
            out.append(f"--- {service}\n{done.stdout}{done.stderr}")
        return "\n".join(out)


def wait_for(what: str, check, stack: Stack, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(2)
    pytest.fail(f"{what} not within {timeout:.0f} s\n{stack.logs()}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if reason := podman_problem():
        pytest.skip(reason)
    deploy_dir = tmp_path_factory.mktemp("deploy")
    env = {
        **os.environ,
        "CONTAINERS_CONF": str(ROOT / "deploy" / "containers.conf"),
        "RELAY_DEPLOY_DIR": str(deploy_dir),
        "RELAY_MODELS": str(cache_root(None)),  # the models the real tests use, fetched once
        "RELAY_CERTS": str(deploy_dir / "certs"),
        "RELAY_TOKEN_FILE": str(deploy_dir / "secrets" / "relay_token"),
        "RELAY_EDGE_API_KEY_PATH": str(deploy_dir / "secrets" / "edge_api_key"),
        "RELAY_CLOUD_PORT": str(free_port()),
        "RELAY_EDGE_PORT": str(free_port()),
    }
    subprocess.run([str(ROOT / "deploy" / "init.sh")], env=env, check=True, capture_output=True, timeout=60)
    build = subprocess.run([str(PODMAN_SH), "build"], env=env, capture_output=True, text=True, timeout=3000)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    stack = Stack(f"relaytest{os.getpid()}", env, deploy_dir)
    try:
        stack.compose("up", "-d")
        yield stack
    finally:
        stack.compose("down", "-t", "2", timeout=300)


@pytest.fixture(scope="module")
def client(stack: Stack):
    from openai import OpenAI

    key = (stack.deploy_dir / "secrets" / "edge_api_key").read_text().strip()
    client = OpenAI(base_url=stack.edge_url + "/v1", api_key=key, max_retries=0, timeout=600)
    client.served_model = client.models.list().data[0].id
    return client


QUESTION = [{"role": "user", "content": "Tom has 3 boxes with 4 apples each and eats 2. How many are left?"}]


def ask(client, max_tokens: int, **relay) -> dict:
    reply = client.chat.completions.create(
        model=client.served_model, messages=QUESTION, max_tokens=max_tokens, temperature=0,
        extra_body={"relay": {"policy": "cloud-only", **relay}},
    )  # fmt: skip
    return reply.model_dump()


def test_stack_comes_up_healthy_with_tls_and_the_token(stack: Stack) -> None:
    wait_for("cloud SERVING over TLS", stack.cloud_serving, stack, timeout=600)
    # Podman starts the edge without waiting for the cloud's health: it must connect once it can.
    health = wait_for(
        "edge connected to the cloud", lambda: (h := stack.edge_health()) and h["cloud"] == "connected" and h,
        stack, timeout=900,
    )  # fmt: skip
    assert health["status"] == "ok"


def test_the_edge_api_wants_its_key(stack: Stack) -> None:
    import httpx

    reply = httpx.get(stack.edge_url + "/v1/models", timeout=10)
    assert reply.status_code == 401


def test_an_answer_relays_through_the_cloud_container(stack: Stack, client) -> None:
    reply = ask(client, max_tokens=8)
    usage = reply["usage"]["relay"]
    assert usage["llm_tokens"] == 8 and usage["relays"] >= 1 and not usage["fallbacks"], usage


def test_cloud_killed_mid_answer_then_restarted(stack: Stack, client) -> None:
    stream = client.chat.completions.create(
        model=client.served_model, messages=QUESTION, max_tokens=48, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"relay": {"policy": "cloud-only"}},
    )  # fmt: skip
    sources, usage, killed = [], None, False
    for chunk in stream:
        data = chunk.model_dump()
        if data.get("relay", {}).get("source"):
            sources.append(data["relay"]["source"])
        if not killed and sources.count("llm") >= 2:
            stack.run("podman", "kill", stack.container("cloud"), timeout=60)
            killed = True
        if data.get("usage"):
            usage = data["usage"]["relay"]
    assert killed and usage is not None
    assert "llm" in sources and sources[-1] == "slm", "the SLM finished the answer"
    assert usage["fallbacks"] and usage["slm_tokens"] > 0, usage

    stack.run("podman", "start", stack.container("cloud"), timeout=120, check=False)  # unless restart did
    wait_for("cloud SERVING after its restart", stack.cloud_serving, stack, timeout=600)
    time.sleep(2)  # past the edge's first backoff
    again = ask(client, max_tokens=8)["usage"]["relay"]
    assert again["llm_tokens"] == 8 and not again["fallbacks"], again


def test_compose_run_opens_the_chat_app_against_the_cloud_container(stack: Stack) -> None:
    """`docker compose run --rm edge relay chat`, in a real terminal (tmux)."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    session = f"{stack.project}-chat"
    command = f"{PODMAN_SH} compose -p {stack.project} run --rm --no-deps edge relay chat --policy cloud-only"
    env_args = [arg for key in ("CONTAINERS_CONF", "RELAY_MODELS", "RELAY_CERTS", "RELAY_TOKEN_FILE",
                                "RELAY_EDGE_API_KEY_PATH", "RELAY_CLOUD_PORT", "RELAY_EDGE_PORT")
                for arg in ("-e", f"{key}={stack.env[key]}")]  # fmt: skip
    stack.run("tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", *env_args, command, timeout=30)

    def screen() -> str:
        return stack.run("tmux", "capture-pane", "-t", session, "-p", timeout=30, check=False).stdout

    try:
        wait_for("the chat connected to the cloud", lambda: "cloud: connected · cloud:50051" in screen(), stack, 300)
        stack.run("tmux", "send-keys", "-t", session, "What is 17 times 23?", "Enter", timeout=30)
        wait_for("an answer written by the cloud", lambda: "LLM 100.0%" in screen(), stack, 600)
        assert "1 relay" in screen()
    finally:
        stack.run("tmux", "send-keys", "-t", session, "C-q", timeout=30, check=False)
        time.sleep(3)
        stack.run("tmux", "kill-session", "-t", session, timeout=30, check=False)
