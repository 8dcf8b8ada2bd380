"""The line a server prints on stdout once it serves, so a supervisor (the edge's embedded cloud)
knows it is up and which port it bound: `RELAY-CLOUD-READY host:port`."""

READY_PREFIX = "RELAY-CLOUD-READY"


def read_ready_address(child, timeout_s: float, prefix: str = READY_PREFIX) -> str | None:  # type: ignore[no-untyped-def]
    """The address a server child (a `subprocess.Popen` with text stdout) announces on its ready
    line (`prefix host:port`), or None if it did not within `timeout_s` (it exited, or is still
    loading)."""
    import threading

    found: list[str] = []

    def read() -> None:
        for line in child.stdout:
            if line.startswith(prefix):
                found.append(line.split()[1])
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    return found[0] if found else None
