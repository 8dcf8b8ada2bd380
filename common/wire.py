"""The generated wire package, regenerated first if `proto/` changed since the last build."""

from common.protogen import ensure_current

ensure_current()

from relaywire.v1 import relay_pb2 as pb  # noqa: E402
from relaywire.v1 import relay_pb2_grpc as pb_grpc  # noqa: E402

__all__ = ["pb", "pb_grpc"]
