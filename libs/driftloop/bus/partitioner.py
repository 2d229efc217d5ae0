"""Kafka's default partitioner, so records batched here land where any other client would put them.

The bus hands the producer whole batches per partition (``Bus.acknowledged``),
so it picks the partition itself. A key must map to the partition the Java
client, librdkafka's ``murmur2_random`` and aiokafka map it to: the stateful
stages rely on a key's records and its table entry sharing a partition, and
other producers of the same topics use their own client. aiokafka's murmur2
is a line-by-line port of Java's; ``murmur2`` computes the same hash in half
the time by reading whole 32-bit words, and ``partitions_for`` hashes a
whole batch of keys at once with numpy, a word position at a time, which
costs a fraction of that per key at a hundred keys and more.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
#: Below this many keys a loop over ``murmur2`` costs less than numpy's per-call overhead.
_VECTOR_KEYS = 32


def murmur2(data: bytes) -> int:
    """The unsigned 32-bit MurmurHash2 of ``data`` with Kafka's seed.

    Java's ``Utils.murmur2`` gives the same values, as signed ints (-973932308 for "21"):

    >>> murmur2(b"21"), murmur2(b"foobar"), murmur2(b"")
    (3321034988, 3504634814, 275646681)
    """
    length = len(data)
    h = _SEED ^ length
    words = length & ~3
    if words:
        for (k,) in struct.iter_unpack("<I", data[:words]):
            k = (k * _M) & _MASK
            k ^= k >> 24
            h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = length & 3
    if tail:
        if tail == 3:
            h ^= data[words + 2] << 16
        if tail >= 2:
            h ^= data[words + 1] << 8
        h = ((h ^ data[words]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``, as Kafka's default partitioner chooses it.

    >>> partition_for(b"applicant-7", 3), partition_for(b"applicant-8", 3)
    (0, 2)
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def murmur2_many(keys: Sequence[bytes]) -> np.ndarray:
    """``murmur2`` of every key, as uint32: the same steps, each applied to all keys that reach it.

    The keys are laid side by side in a zero-padded matrix, one row each. A
    word position updates only the keys long enough to hold that word, and
    each key's tail bytes are read at its own length.

    >>> murmur2_many([b"21", b"foobar", b""]).tolist()
    [3321034988, 3504634814, 275646681]
    """
    count = len(keys)
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=count)
    width = (int(lengths.max(initial=0)) // 4 + 1) * 4
    flat = np.frombuffer(b"".join(keys) + b"\0", dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    columns = np.arange(width)
    inside = columns < lengths[:, None]
    padded = np.where(inside, flat[np.where(inside, starts[:, None] + columns, len(flat) - 1)], 0).astype(np.uint8)
    words = padded.view("<u4").astype(np.uint32)
    m = np.uint32(_M)
    h = (np.uint32(_SEED) ^ lengths.astype(np.uint32)).astype(np.uint32)
    for j in range(int(lengths.max(initial=0)) // 4):
        k = words[:, j] * m
        k ^= k >> np.uint32(24)
        k *= m
        h = np.where(lengths >= 4 * (j + 1), (h * m) ^ k, h)
    tail = lengths & 3
    end = lengths & ~3
    rows = np.arange(count)
    byte = [padded[rows, np.minimum(end + i, width - 1)].astype(np.uint32) for i in range(3)]
    h = np.where(tail == 3, h ^ (byte[2] << np.uint32(16)), h)
    h = np.where(tail >= 2, h ^ (byte[1] << np.uint32(8)), h)
    h = np.where(tail >= 1, (h ^ byte[0]) * m, h)
    h ^= h >> np.uint32(13)
    h *= m
    return h ^ (h >> np.uint32(15))


def partitions_for(keys: Sequence[bytes], partitions: int) -> list[int]:
    """``partition_for`` of each key, computed for the whole batch at once when it is large enough to pay."""
    if len(keys) < _VECTOR_KEYS:
        return [partition_for(key, partitions) for key in keys]
    chosen: list[int] = ((murmur2_many(keys) & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).tolist()
    return chosen
