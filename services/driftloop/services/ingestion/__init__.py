"""Ingestion: the front door. Validates producers' events; nothing bad passes, nothing is dropped silently."""
