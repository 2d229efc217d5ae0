"""JWT bearer tokens: signature, expiry, issuer and audience checked with the configured key; the role read from
its claim. Keys and tokens are made here, as an identity provider would make them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from driftloop.auth import Role
from driftloop.bearer import JwtSettings, JwtVerifier, TokenRefused

SECRET = "a-secret-the-provider-and-driftloop-share"
CLAIMS = {"sub": "dana", "iss": "https://idp", "aud": "driftloop", "role": "approver"}


def _claims(**changes: object) -> dict[str, object]:
    return {**CLAIMS, "exp": int(time.time()) + 300, **changes}


def test_an_hs256_token_gives_its_subject_and_role() -> None:
    verifier = JwtVerifier(JwtSettings(issuer="https://idp", audience="driftloop", role_claim="role", secret=SECRET))
    identity = verifier.identify(jwt.encode(_claims(), SECRET, algorithm="HS256"))
    assert (identity.name, identity.role, identity.token_id) == ("dana", Role.approver, "jwt:dana")


# Claims are built when the test runs, not when it is collected: a long suite would outlive their expiry.
@pytest.mark.parametrize(
    ("claims", "key", "reason"),
    [
        (lambda: _claims(exp=int(time.time()) - 10), SECRET, "expired"),
        (lambda: _claims(iss="https://other"), SECRET, "another issuer"),
        (lambda: _claims(aud="billing"), SECRET, "another audience"),
        (_claims, "another-secret-of-thirty-two-bytes!", "Signature verification failed"),
        (lambda: _claims(role="superuser"), SECRET, "names no driftloop role"),
        (lambda: {key: value for key, value in _claims().items() if key != "exp"}, SECRET, 'missing the "exp" claim'),
    ],
)
def test_refused_tokens_say_why(claims: Callable[[], dict[str, object]], key: str, reason: str) -> None:
    verifier = JwtVerifier(JwtSettings(issuer="https://idp", audience="driftloop", role_claim="role", secret=SECRET))
    with pytest.raises(TokenRefused, match=reason):
        verifier.identify(jwt.encode(claims(), key, algorithm="HS256"))


def test_the_algorithm_is_the_keys_not_the_tokens(tmp_path: Path) -> None:
    """An HS256 token signed with the RS256 public key as its secret (the classic confusion) is refused."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "key.pem").write_bytes(public_pem)
    verifier = JwtVerifier(
        JwtSettings(issuer="https://idp", audience="driftloop", role_claim="role", public_key_file=tmp_path / "key.pem")
    )
    assert verifier.identify(jwt.encode(_claims(), private, algorithm="RS256")).role is Role.approver
    with pytest.raises(TokenRefused):
        verifier.identify(_hs256(_claims(), public_pem))


def _hs256(claims: dict[str, object], secret: bytes) -> str:
    """An HS256 token made by hand: PyJWT itself refuses to sign with a PEM key as a secret."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signed = part(b'{"alg":"HS256","typ":"JWT"}') + "." + part(json.dumps(claims).encode())
    return signed + "." + part(hmac.new(secret, signed.encode(), hashlib.sha256).digest())


def test_a_jwks_file_chooses_the_key_by_kid(tmp_path: Path) -> None:
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]
    jwks = {
        "keys": [
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": f"k{i}", "alg": "RS256"}
            for i, key in enumerate(keys)
        ]
    }
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    verifier = JwtVerifier(
        JwtSettings(issuer="https://idp", audience="driftloop", role_claim="groups", jwks_file=tmp_path / "jwks.json")
    )
    token = jwt.encode(_claims(groups=["viewer", "operator"]), keys[1], algorithm="RS256", headers={"kid": "k1"})
    assert verifier.identify(token).role is Role.operator
    wrong = jwt.encode(_claims(groups=["admin"]), keys[1], algorithm="RS256", headers={"kid": "k0"})
    with pytest.raises(TokenRefused):
        verifier.identify(wrong)
