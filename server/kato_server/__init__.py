"""The grpc.aio server of kato-grpc (the shell around the pure engine)."""
