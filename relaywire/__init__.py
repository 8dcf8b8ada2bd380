"""Generated gRPC stubs of `proto/relaywire/` (not committed: `python -m common.protogen` writes
them, and importing `common.wire` regenerates them whenever the .proto files change)."""
