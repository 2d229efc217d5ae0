"""Shared fixtures: a real broker, PostgreSQL and an S3 endpoint, started once per session."""

pytest_plugins = ["tests.fixtures.kafka", "tests.fixtures.postgres", "tests.fixtures.s3"]
