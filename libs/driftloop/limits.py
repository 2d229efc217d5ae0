"""How deep and how long an input may be, measured on its bytes before anything parses it.

Python's ``json`` and pydantic recurse, so a body nested a thousand levels
deep becomes a ``RecursionError`` (a 500) instead of a refusal, and a batch of
a million items costs a million model validations before a length check
could see it. Measuring the raw bytes first lets every service refuse such
input with its reason, at a cost of a few milliseconds per megabyte, with no
parser involved. Pure functions: the HTTP layer applies them to request
bodies, the consumers to record sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_QUOTE, _OPEN_ARRAY, _OPEN_OBJECT, _CLOSE_ARRAY, _CLOSE_OBJECT, _COMMA = b'"[{]},'
#: Every byte but quotes, brackets and commas: what ``bytes.translate`` deletes before counting.
_NOISE = bytes(c for c in range(256) if c not in b'"[]{},')

#: How much of an oversized record a dead letter keeps; the whole one stays on its topic, at its offset.
RECORD_HEAD_BYTES = 4096


class InputRefused(ValueError):
    """An input over a limit; ``status`` is the HTTP status that says so."""

    status = 422


class TooDeep(InputRefused):
    status = 422


class TooLong(InputRefused):
    status = 413


@dataclass(frozen=True)
class JsonShape:
    #: Containers nested inside each other at the deepest point; 0 for a bare scalar.
    depth: int
    #: Items of the longest array (an empty array counts as 1); 0 without arrays.
    longest_array: int


def json_shape(body: bytes, max_depth: int) -> JsonShape:
    """Nesting depth and longest array of JSON (or NDJSON) text, without parsing it.

    Escapes are dropped first (``\\\\`` pairs, then ``\\"``), so every quote
    left opens or closes a string, and brackets and commas inside strings do
    not count. Past ``max_depth`` the depth is returned at once, with no
    array measured. Malformed text gets some shape, never an error: the
    parser that comes after rejects it.

    >>> json_shape(b'{"rows": [[1, 2], [3, 4, 5]], "note": "[[[,,"}', 32)
    JsonShape(depth=3, longest_array=3)
    >>> json_shape(b'"\\\\" [[[ \\\\"', 32)
    JsonShape(depth=0, longest_array=0)
    """
    structure, opens, depth = _structure(body)
    if not len(structure):
        return JsonShape(0, 0)
    deepest = max(int(depth.max()), 0)
    if deepest > max_depth:
        return JsonShape(deepest, 0)
    # A comma belongs to the latest container opened at its own depth: sorted by depth (stably, so by position
    # within a depth), each comma follows the open of its container, and a running count of opens names it.
    marks = np.flatnonzero(opens | (structure == _COMMA))
    levels = np.clip(depth[marks], -1, max_depth).astype(np.int16)
    ordered = marks[np.argsort(levels, kind="stable")]
    is_open = opens[ordered]
    container = np.cumsum(is_open) - 1
    commas = np.bincount(container[~is_open & (container >= 0)], minlength=int(is_open.sum()))
    arrays = structure[ordered[is_open]] == _OPEN_ARRAY
    longest = int(commas[arrays].max()) + 1 if arrays.any() else 0
    return JsonShape(deepest, longest)


def json_depth(body: bytes) -> int:
    """The nesting depth ``json_shape`` measures, without measuring arrays.

    >>> json_depth(b'{"rows": [[1, 2], [3, 4, 5]], "note": "[[[,,"}')
    3
    """
    _, _, depth = _structure(body)
    return max(int(depth.max()), 0) if len(depth) else 0


def _structure(body: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The brackets and commas outside strings, which of them open a container, and the depth after each."""
    kept = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOISE)
    chars = np.frombuffer(kept, dtype=np.uint8)
    quotes = chars == _QUOTE
    outside = (np.cumsum(quotes, dtype=np.int64) & 1) == 0
    structure = chars[outside & ~quotes]
    opens = (structure == _OPEN_ARRAY) | (structure == _OPEN_OBJECT)
    closes = (structure == _CLOSE_ARRAY) | (structure == _CLOSE_OBJECT)
    return structure, opens, np.cumsum(opens.astype(np.int64) - closes)


def check_json(body: bytes, *, max_depth: int, max_items: int) -> None:
    """Raise ``TooDeep`` or ``TooLong`` naming the limit when ``body`` breaks one.

    An array holds at most one item more than the body has commas, so a
    body with fewer commas than ``max_items`` has its depth measured only.
    """
    few_commas = body.count(b",") < max_items
    shape = JsonShape(json_depth(body), 0) if few_commas else json_shape(body, max_depth)
    if shape.depth > max_depth:
        raise TooDeep(f"JSON nested more than {max_depth} levels deep")
    if shape.longest_array > max_items:
        raise TooLong(f"a JSON array of {shape.longest_array} items; at most {max_items} per request")


def oversized_record(size: int, limit: int) -> str | None:
    """Why a consumed record of ``size`` bytes is refused, or None when it is within ``limit``."""
    if size <= limit:
        return None
    return (
        f"record of {size} bytes is over the {limit}-byte limit (DRIFTLOOP_MAX_RECORD_BYTES); "
        f"the payload here is its first {RECORD_HEAD_BYTES} bytes"
    )


def record_head(value: bytes, limit: int) -> bytes:
    """What a dead letter keeps of a record: all of it within ``limit``, else its head."""
    return value if len(value) <= limit else value[:RECORD_HEAD_BYTES]
