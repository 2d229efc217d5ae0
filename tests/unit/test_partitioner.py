"""The bus picks partitions itself, so it must pick the ones Kafka's default partitioner picks, key for key."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner, murmur2
from hypothesis import given
from hypothesis import strategies as st

from driftloop.bus.partitioner import murmur2_many, partition_for, partitions_for

keys = st.lists(st.binary(max_size=64), max_size=300)


@given(keys)
def test_the_batch_hash_is_the_java_clients_hash_of_every_key(batch: list[bytes]) -> None:
    assert murmur2_many(batch).tolist() == [murmur2(key) for key in batch]


@given(keys, st.integers(min_value=1, max_value=64))
def test_a_batch_lands_where_the_default_partitioner_puts_each_key(batch: list[bytes], count: int) -> None:
    partitions = list(range(count))
    expected = [DefaultPartitioner()(key, partitions, partitions) for key in batch]
    assert partitions_for(batch, count) == expected
    assert [partition_for(key, count) for key in batch] == expected


def test_keys_of_mixed_lengths_in_one_batch_each_keep_their_own_tail() -> None:
    # Lengths 0..9 cover every tail (0-3 bytes) at zero, one and two whole words.
    batch = [b"abcdefghi"[:n] for n in range(10)] * 4
    assert murmur2_many(batch).tolist() == [murmur2(key) for key in batch]
