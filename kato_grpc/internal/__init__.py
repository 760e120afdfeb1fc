"""Generated storage messages (proto/kato/internal/v1): not part of the API."""
