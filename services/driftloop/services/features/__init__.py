"""Features: per-entity feature views on the stream, an online store for lookups, an offline store for training."""
