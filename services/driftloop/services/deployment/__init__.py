"""Deployment: serves each model's champion on the stream and over REST, and hot-swaps on promotion."""
