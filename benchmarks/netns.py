"""Two network namespaces, edge and cloud, joined by a veth pair whose both ends are shaped with
tc tbf (netem does not exist on these kernels; benchmarks/delay_proxy.py adds latency and loss).

    with WanLink(rate_mbit=10) as link:
        link.run_in("cloud", ["relay", "cloud", "serve", ...])
Needs root (CAP_NET_ADMIN); `problem()` says why it cannot run, for a clear skip or error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


def problem() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (apt-get install iproute2)"
    probe = f"relay-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class WanLink:
    rate_mbit: float = 10.0
    edge_ip: str = "10.77.0.1"
    cloud_ip: str = "10.77.0.2"
    tag: str = ""

    def __post_init__(self) -> None:
        self.tag = self.tag or str(os.getpid())
        self.namespaces = {"edge": f"relay-edge-{self.tag}", "cloud": f"relay-cloud-{self.tag}"}
        self.veths = {"edge": f"rve{self.tag}"[:15], "cloud": f"rvc{self.tag}"[:15]}

    def __enter__(self) -> WanLink:
        try:
            self._create()
        except subprocess.CalledProcessError:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        edge, cloud = self.namespaces["edge"], self.namespaces["cloud"]
        _ip("netns", "add", edge)
        _ip("netns", "add", cloud)
        _ip("link", "add", self.veths["edge"], "type", "veth", "peer", "name", self.veths["cloud"])
        for side, address in (("edge", self.edge_ip), ("cloud", self.cloud_ip)):
            ns, dev = self.namespaces[side], self.veths[side]
            _ip("link", "set", dev, "netns", ns)
            self.sh(side, ["ip", "addr", "add", f"{address}/24", "dev", dev])
            self.sh(side, ["ip", "link", "set", dev, "up"])
            self.sh(side, ["ip", "link", "set", "lo", "up"])
            # tbf: rate, a burst of a few MTUs, and a queue bounded to 100 ms at that rate.
            burst = max(16_000, int(self.rate_mbit * 1e6 / 8 / 250))
            limit = int(self.rate_mbit * 1e6 / 8 * 0.1) + burst
            self.sh(side, ["tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{self.rate_mbit}mbit",
                           "burst", str(burst), "limit", str(limit)])  # fmt: skip

    def sh(self, side: str, cmd: list[str]) -> None:
        subprocess.run(["ip", "netns", "exec", self.namespaces[side], *cmd], check=True, capture_output=True)

    def popen(self, side: str, cmd: list[str], **kw) -> subprocess.Popen:
        """Start `cmd` inside a namespace (its children stay there too)."""
        return subprocess.Popen(["ip", "netns", "exec", self.namespaces[side], *cmd], **kw)

    def close(self) -> None:
        for ns in self.namespaces.values():  # deleting a namespace deletes its veth end, and the peer
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)
