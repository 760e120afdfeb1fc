"""Generated protobuf code for kato.v1 (do not edit; `make proto` regenerates it)."""
