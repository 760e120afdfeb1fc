"""kato-grpc: the KATO sequence-pattern engine as a gRPC service."""

__version__ = "0.1.0"
