"""Generated from proto/kato/internal/v1 by `make proto`; never edited by hand."""
