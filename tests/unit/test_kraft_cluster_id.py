"""The local Kafka's cluster id must be one its storage tool accepts as an argument."""

import base64
import uuid
from collections.abc import Iterator

from driftloop.broker import kraft_cluster_id


def test_a_draw_that_would_begin_with_a_dash_is_redrawn() -> None:
    leading_dash = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))
    plain = uuid.UUID(int=1)
    draws: Iterator[uuid.UUID] = iter([leading_dash, plain])

    cluster_id = kraft_cluster_id(lambda: next(draws))

    assert base64.urlsafe_b64encode(leading_dash.bytes).decode().startswith("-")
    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")


def test_an_id_is_22_characters_of_url_safe_base64_for_16_bytes() -> None:
    for _ in range(500):
        cluster_id = kraft_cluster_id()
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
