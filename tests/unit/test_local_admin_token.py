"""The token ``driftloop up`` and the demo make for the person at the terminal."""

from __future__ import annotations

from pathlib import Path

from driftloop.auth import Role
from driftloop.cli.governance import local_admin_token, token_file
from driftloop.db import TokenStore, make_engine
from driftloop.settings import DriftloopSettings


def test_the_local_admin_token_is_private_reused_and_replaced_once_revoked(tmp_path: Path) -> None:
    settings = DriftloopSettings(home=tmp_path / "home")
    token = local_admin_token(settings)
    assert token_file(settings).stat().st_mode & 0o777 == 0o600
    assert local_admin_token(settings) == token
    engine = make_engine(settings.db_url)
    try:
        store = TokenStore(engine)
        identity = store.identify(token)
        assert identity is not None and (identity.name, identity.role) == ("local-admin", Role.admin)
        assert token not in {value for row in store.tokens() for value in row.model_dump().values()}
        assert store.revoke(identity.token_id)
        replaced = local_admin_token(settings)
        assert replaced != token and store.identify(replaced) is not None and store.identify(token) is None
    finally:
        engine.dispose()
