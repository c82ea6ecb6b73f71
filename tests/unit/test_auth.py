"""Passwords (scrypt), the bootstrap users file, and signed bearer tokens."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import orjson
import pytest

from mutirao.auth import (
    ADMIN,
    SUBMITTER,
    Claims,
    TokenSigner,
    User,
    UserStore,
    new_session,
    read_or_create_secret,
)
from mutirao.errors import AuthError, ConflictError, ValidationError

NOW = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> UserStore:
    return UserStore(tmp_path / "data" / "users.json")


def test_add_then_verify(store: UserStore) -> None:
    assert store.add("alice", "correct horse") == User("alice", SUBMITTER)
    assert store.add("root.admin_1-x", "battery staple", role=ADMIN) == User(
        "root.admin_1-x", ADMIN
    )
    assert store.verify("alice", "correct horse") == User("alice", SUBMITTER)
    assert store.verify("root.admin_1-x", "battery staple") == User("root.admin_1-x", ADMIN)


def test_the_users_file_is_private_and_holds_no_password(store: UserStore) -> None:
    store.add("alice", "correct horse")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    raw = store.path.read_bytes()
    assert b"correct horse" not in raw
    entry = orjson.loads(raw)["alice"]
    assert set(entry) == {"salt", "hash", "role"}


def test_an_older_file_with_an_admin_flag_reads_as_roles(store: UserStore) -> None:
    store.add("alice", "correct horse", role=ADMIN)
    store.add("bob", "battery staple")
    entries = orjson.loads(store.path.read_bytes())
    for entry, admin in ((entries["alice"], True), (entries["bob"], False)):
        del entry["role"]
        entry["admin"] = admin
    store.path.write_bytes(orjson.dumps(entries))
    assert store.verify("alice", "correct horse") == User("alice", ADMIN)
    assert store.verify("bob", "battery staple") == User("bob", SUBMITTER)


def test_wrong_password_or_unknown_user_is_an_auth_error(store: UserStore) -> None:
    store.add("alice", "correct horse")
    with pytest.raises(AuthError, match="wrong user name or password") as info:
        store.verify("alice", "correct horsE")
    assert info.value.status == 401
    with pytest.raises(AuthError, match="wrong user name or password"):
        store.verify("mallory", "correct horse")


def test_verify_with_no_users_file(store: UserStore) -> None:
    with pytest.raises(AuthError):
        store.verify("alice", "whatever1")


def test_adding_an_existing_user_conflicts_unless_replacing(store: UserStore) -> None:
    store.add("alice", "first password")
    with pytest.raises(ConflictError) as info:
        store.add("alice", "second password")
    assert info.value.field == "name"
    store.add("alice", "second password", role=ADMIN, replace=True)
    assert store.verify("alice", "second password") == User("alice", ADMIN)
    with pytest.raises(AuthError):
        store.verify("alice", "first password")


@pytest.mark.parametrize(
    ("name", "password", "field"),
    [
        ("", "long enough", "name"),
        ("bad name", "long enough", "name"),
        ("semi;colon", "long enough", "name"),
        ("alice", "short", "password"),
    ],
)
def test_add_validates_name_and_password(
    store: UserStore, name: str, password: str, field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        store.add(name, password)
    assert info.value.field == field
    assert not store.path.exists()


# -- tokens ---------------------------------------------------------------------------------


ALICE = User("alice", SUBMITTER)


def test_issue_then_verify() -> None:
    signer = TokenSigner("s3cret")
    token = signer.issue(User("alice", ADMIN), NOW, 60.0, new_session())
    claims = signer.verify(token, NOW)
    assert (claims.user, claims.expires, claims.issued) == (User("alice", ADMIN), NOW + 60, NOW)
    assert claims.token_id
    assert not claims.minted
    assert signer.verify(token, NOW + 60.0) == claims
    # Another orchestrator sharing the secret accepts it.
    assert TokenSigner("s3cret").verify(token, NOW + 1) == claims
    # Each login has its own session id (what a logout revokes).
    again = signer.verify(signer.issue(ALICE, NOW, 60.0, new_session()), NOW)
    assert again.token_id != claims.token_id
    assert not again.refresh


def test_a_refresh_token_says_so_and_shares_its_session() -> None:
    signer = TokenSigner("s3cret")
    session = new_session()
    access = signer.verify(signer.issue(ALICE, NOW, 60.0, session), NOW)
    renew = signer.verify(signer.issue(ALICE, NOW, 3600.0, session, refresh=True), NOW)
    assert renew.refresh
    assert not access.refresh
    assert renew.token_id == access.token_id == session


def test_a_minted_token_is_marked_so() -> None:
    signer = TokenSigner("s3cret")
    claims = signer.verify(signer.mint(ALICE, NOW, 60.0), NOW)
    assert claims == Claims(ALICE, NOW + 60.0)
    assert claims.minted


def test_an_expired_token_is_rejected() -> None:
    signer = TokenSigner("s3cret")
    token = signer.issue(ALICE, NOW, 60.0, new_session())
    with pytest.raises(AuthError, match="expired") as info:
        signer.verify(token, NOW + 60.001)
    assert info.value.to_json()["expired"] is True  # the client's cue to refresh


def test_a_token_checked_before_is_still_rejected_once_expired() -> None:
    # Verified tokens are remembered (a client sends one with every request), with their
    # expiry: the remembered answer must not outlive the token.
    signer = TokenSigner("s3cret")
    token = signer.issue(ALICE, NOW, 60.0, new_session())
    assert signer.verify(token, NOW).user == ALICE
    assert signer.verify(token, NOW + 30.0).user == ALICE
    with pytest.raises(AuthError, match="expired"):
        signer.verify(token, NOW + 60.001)


def test_a_token_of_an_older_version_is_refused_with_a_hint() -> None:
    body = orjson.dumps({"sub": "alice", "adm": True, "exp": NOW + 60})
    signer = TokenSigner("s3cret")
    token = f"{_b64(body)}.{signer._sign(body)}"
    with pytest.raises(AuthError, match="older version: log in again"):
        signer.verify(token, NOW)


def test_a_token_signed_with_another_secret_is_rejected() -> None:
    token = TokenSigner("other").issue(ALICE, NOW, 60.0, new_session())
    with pytest.raises(AuthError, match="invalid token signature"):
        TokenSigner("s3cret").verify(token, NOW)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_tampered_token_is_rejected() -> None:
    signer = TokenSigner("s3cret")
    token = signer.issue(ALICE, NOW, 60.0, new_session())
    body, signature = token.split(".")

    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    with pytest.raises(AuthError, match="invalid token signature"):
        signer.verify(f"{body}.{flipped}", NOW)

    # Granting oneself admin (or more time) breaks the signature.
    forged = _b64(orjson.dumps({"sub": "alice", "role": ADMIN, "exp": NOW + 1e9, "svc": 1}))
    with pytest.raises(AuthError, match="invalid token signature"):
        signer.verify(f"{forged}.{signature}", NOW)

    with pytest.raises(AuthError, match="invalid token signature"):
        signer.verify(f"{body}.", NOW)


@pytest.mark.parametrize("token", ["", "no-dot-at-all", "a.b", "é.é", "abc.sig-é"])
def test_malformed_tokens_are_auth_errors(token: str) -> None:
    with pytest.raises(AuthError):
        TokenSigner("s3cret").verify(token, NOW)


def test_a_non_ascii_signature_is_an_auth_error_not_a_crash() -> None:
    signer = TokenSigner("s3cret")
    token = signer.issue(ALICE, NOW, 60.0, new_session())
    with pytest.raises(AuthError, match="invalid token signature"):
        signer.verify(token[:-1] + "é", NOW)


def test_read_or_create_secret(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "token.secret"
    secret = read_or_create_secret(path)
    assert len(secret) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_or_create_secret(path) == secret
    assert read_or_create_secret(tmp_path / "other.secret") != secret
