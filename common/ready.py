"""The line a server prints on stdout once it serves, so a supervisor (the edge's embedded cloud)
knows it is up and which port it bound: `RELAY-CLOUD-READY host:port`."""

READY_PREFIX = "RELAY-CLOUD-READY"
