"""Who may do what: roles, API tokens and their hashes, as pure functions.

A token is ``dl_<id>_<secret>``: the id finds the stored row, the secret (32
random bytes) is what proves possession. Only the token's SHA-256 is stored.
A fast hash is enough here, unlike for passwords: a slow hash (scrypt,
argon2) defends low-entropy secrets against guessing, and 256 random bits
cannot be guessed however fast the hash is. Comparing the digests with
``hmac.compare_digest`` keeps the check constant-time, so response times say
nothing about how much of a forged token matched.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    viewer = "viewer"
    producer = "producer"
    operator = "operator"
    approver = "approver"
    admin = "admin"


#: The ops ladder: each role may do what the ones below it may. ``producer`` stands beside it.
LADDER: tuple[Role, ...] = (Role.viewer, Role.operator, Role.approver, Role.admin)

TOKEN_PREFIX = "dl_"


def allows(held: Role, needed: Role) -> bool:
    """Whether a token of role ``held`` may call an endpoint that needs ``needed``.

    ``producer`` only writes data: it reaches the ingestion endpoints and
    nothing else, and only it and ``admin`` reach those.

    >>> allows(Role.approver, Role.operator), allows(Role.viewer, Role.operator)
    (True, False)
    >>> allows(Role.producer, Role.producer), allows(Role.admin, Role.producer), allows(Role.operator, Role.producer)
    (True, True, False)
    >>> allows(Role.producer, Role.viewer)
    False
    """
    if held is Role.admin:
        return True
    if Role.producer in (held, needed):
        return held is needed
    return LADDER.index(held) >= LADDER.index(needed)


@dataclass(frozen=True)
class Identity:
    """The caller as a token proves it: the audit's actor is its name and role."""

    token_id: str
    name: str
    role: Role


def new_token() -> tuple[str, str]:
    """A fresh token and its id; the token is shown once and never stored."""
    token_id = secrets.token_hex(6)
    return f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}", token_id


def token_id_of(token: str) -> str | None:
    """The id part of a well-formed token, None for anything else.

    >>> token_id_of("dl_0a1b2c3d4e5f_secret"), token_id_of("Bearer x"), token_id_of("dl__secret")
    ('0a1b2c3d4e5f', None, None)
    """
    if not token.startswith(TOKEN_PREFIX):
        return None
    token_id, _, secret = token.removeprefix(TOKEN_PREFIX).partition("_")
    return token_id if token_id and secret else None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(token_hash(token), stored_hash)
