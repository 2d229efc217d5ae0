"""OAuth2 bearer tokens (JWT) from an identity provider, beside driftloop's own API tokens.

The provider signs; driftloop only verifies, with PyJWT, against the key in
its settings: an HS256 shared secret, an RS256 public key (PEM), or a JWKS
file whose key the token's ``kid`` names. A token must carry ``exp`` and
``sub``, and match the configured issuer and audience; its role is read from
a configurable claim (a dotted path such as ``realm_access.roles`` reaches
into nested claims, as Keycloak nests them). The subject is the identity the
audit records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from driftloop.auth import LADDER, Identity, Role


class TokenRefused(ValueError):
    """The bearer token is no proof of anything: its message says why, for the 401."""


@dataclass(frozen=True)
class JwtSettings:
    issuer: str
    audience: str
    role_claim: str
    secret: str = ""
    public_key_file: Path | None = None
    jwks_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.secret or self.public_key_file or self.jwks_file)


def strongest(roles: list[Role]) -> Role | None:
    """The role that may do most of those a token names; ``producer`` only when it names nothing else.

    >>> strongest([Role.viewer, Role.approver]), strongest([Role.producer]), strongest([])
    (<Role.approver: 'approver'>, <Role.producer: 'producer'>, None)
    """
    ranked = [r for r in roles if r in LADDER]
    if ranked:
        return max(ranked, key=LADDER.index)
    return Role.producer if Role.producer in roles else None


def role_of(claims: Mapping[str, Any], claim: str) -> Role:
    """The role a token's claims grant: the claim at the dotted path, a role name or a list of them.

    >>> role_of({"realm_access": {"roles": ["offline_access", "operator"]}}, "realm_access.roles")
    <Role.operator: 'operator'>
    >>> role_of({"role": "admin"}, "role")
    <Role.admin: 'admin'>
    """
    value: Any = claims
    for part in claim.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    role = strongest([Role(name) for name in names if isinstance(name, str) and name in Role.__members__])
    if role is None:
        raise TokenRefused(f"the token's {claim!r} claim names no driftloop role")
    return role


class JwtVerifier:
    def __init__(self, settings: JwtSettings) -> None:
        self.settings = settings
        self._keys: jwt.PyJWKSet | None = None
        self._public_key: str | None = None
        if settings.jwks_file is not None:
            self._keys = jwt.PyJWKSet.from_json(settings.jwks_file.read_text())
        elif settings.public_key_file is not None:
            self._public_key = settings.public_key_file.read_text()

    def _key(self, token: str) -> tuple[Any, str]:
        """The key and the one algorithm it may verify: a token never chooses how it is checked."""
        if self._keys is not None:
            kid = jwt.get_unverified_header(token).get("kid")
            for key in self._keys.keys:
                if kid is None or key.key_id == kid:
                    return key.key, key.algorithm_name or "RS256"
            raise TokenRefused(f"no key {kid!r} in the configured JWKS")
        if self._public_key is not None:
            return self._public_key, "RS256"
        return self.settings.secret, "HS256"

    def identify(self, token: str) -> Identity:
        try:
            key, algorithm = self._key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=self.settings.issuer or None,
                audience=self.settings.audience or None,
                options={"require": ["exp", "sub", *(["iss"] if self.settings.issuer else [])]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenRefused("the token has expired") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenRefused("the token is from another issuer") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRefused("the token is meant for another audience") from exc
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"invalid token: {exc}") from exc
        subject = str(claims["sub"])
        return Identity(token_id=f"jwt:{subject}", name=subject, role=role_of(claims, self.settings.role_claim))
