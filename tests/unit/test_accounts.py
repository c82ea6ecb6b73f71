"""Users, revocations and secrets as journaled state: the rules, and that replay and a
snapshot give the same state (so a standby and a restarted node agree with the leader)."""

from __future__ import annotations

import pytest

from mutirao.auth import ADMIN, SUBMITTER, VIEWER, Claims, TokenSigner, User, new_session
from mutirao.errors import AuthError, ConflictError, NotFoundError, ValidationError
from mutirao.orchestrator.accounts import Accounts
from mutirao.orchestrator.tasks import TaskTable, decode_snapshot

NOW = 1_700_000_000.0
SIGNER = TokenSigner("s3cret")
ALICE = User("alice", SUBMITTER)


def _login(name: str, role: str, at: float, *, refresh: bool = False) -> Claims:
    token = SIGNER.issue(User(name, role), at, 3600, new_session(), refresh=refresh)
    return SIGNER.verify(token, at)


def _revoke(accounts: Accounts, claims: Claims, now: float) -> dict[str, object]:
    assert claims.token_id is not None
    return accounts.revoke(claims.token_id, claims.expires, now)


def _apply(table: TaskTable, record: dict[str, object]) -> None:
    assert table.apply(record) == []


@pytest.fixture
def table() -> TaskTable:
    table = TaskTable()
    accounts = table.accounts
    _apply(table, accounts.add("root", ADMIN, "aa", "bb", NOW))
    _apply(table, accounts.add("alice", SUBMITTER, "cc", "dd", NOW))
    return table


def test_a_login_token_stands_for_the_current_user_record(table: TaskTable) -> None:
    accounts = table.accounts
    token = _login("alice", SUBMITTER, NOW + 1)
    assert accounts.authenticate(token) == User("alice", SUBMITTER)
    _apply(table, accounts.change("alice", NOW + 2, role=VIEWER))
    assert accounts.authenticate(token) == User("alice", VIEWER), "demotion is immediate"
    _apply(table, accounts.remove("alice"))
    with pytest.raises(AuthError, match="no longer exists"):
        accounts.authenticate(token)


def test_a_password_change_and_sign_out_revoke_earlier_tokens_only(table: TaskTable) -> None:
    accounts = table.accounts
    before = _login("alice", SUBMITTER, NOW + 1)
    _apply(table, accounts.change("alice", NOW + 2, password=("ee", "ff")))
    with pytest.raises(AuthError, match="revoked"):
        accounts.authenticate(before)
    after = _login("alice", SUBMITTER, NOW + 3)
    assert accounts.authenticate(after).name == "alice"
    _apply(table, accounts.change("alice", NOW + 4, sign_out=True))
    with pytest.raises(AuthError, match="revoked"):
        accounts.authenticate(after)
    assert accounts.authenticate(_login("alice", SUBMITTER, NOW + 5)).name == "alice"


def test_a_logout_revokes_that_session_alone_until_it_would_expire(table: TaskTable) -> None:
    accounts = table.accounts
    one, other = _login("alice", SUBMITTER, NOW + 1), _login("alice", SUBMITTER, NOW + 1)
    _apply(table, _revoke(accounts, one, NOW + 2))
    with pytest.raises(AuthError, match="revoked"):
        accounts.authenticate(one)
    assert accounts.authenticate(other).name == "alice"
    # The session's refresh token is revoked with it.
    assert one.token_id is not None
    renew = SIGNER.issue(ALICE, NOW + 1, 3600, one.token_id, refresh=True)
    with pytest.raises(AuthError, match="revoked"):
        accounts.authenticate(SIGNER.verify(renew, NOW + 3))
    # A revocation recorded after the first one expired drops it: the list stays short.
    _apply(table, _revoke(accounts, other, one.expires + 1))
    assert set(accounts.state.revoked) == {other.token_id}


def test_a_minted_token_is_trusted_on_its_claims(table: TaskTable) -> None:
    minted = SIGNER.verify(SIGNER.mint(User("mutirao-operator", SUBMITTER), NOW, 60), NOW)
    assert table.accounts.authenticate(minted) == User("mutirao-operator", SUBMITTER)


def test_the_rules_of_the_commands(table: TaskTable) -> None:
    accounts = table.accounts
    with pytest.raises(ConflictError) as taken:
        accounts.add("alice", SUBMITTER, "", "", NOW)
    assert taken.value.field == "name"
    with pytest.raises(ValidationError, match="role must be one of") as bad_role:
        accounts.add("bob", "root", "", "", NOW)
    assert bad_role.value.field == "role"
    with pytest.raises(ValidationError) as bad_name:
        accounts.add("bad name", SUBMITTER, "", "", NOW)
    assert bad_name.value.field == "name"
    with pytest.raises(NotFoundError):
        accounts.remove("nobody")
    # The last admin can be neither removed nor demoted; with a second one it can.
    with pytest.raises(ConflictError, match="only admin"):
        accounts.remove("root")
    with pytest.raises(ConflictError, match="only admin"):
        accounts.change("root", NOW, role=SUBMITTER)
    _apply(table, accounts.change("alice", NOW, role=ADMIN))
    _apply(table, accounts.remove("root"))
    assert [v["name"] for v in accounts.views()] == ["alice"]


def test_secrets_are_recorded_once() -> None:
    accounts = Accounts()
    record = accounts.secrets("key", "join")
    assert record == {"e": "secrets", "token_secret": "key", "join_token": "join"}
    accounts.apply(record)
    assert accounts.secrets("key", "join") is None
    assert accounts.secrets("rotated", "join") is not None


def test_replay_and_snapshot_give_the_same_accounts(table: TaskTable) -> None:
    accounts = table.accounts
    records = [
        accounts.secrets("key", "join"),
        accounts.change("alice", NOW + 1, password=("11", "22")),
        _revoke(accounts, _login("root", ADMIN, NOW), NOW + 2),
        accounts.add("carla", VIEWER, "33", "44", NOW + 3),
    ]
    for record in records:
        assert record is not None
        _apply(table, record)
    restored = TaskTable()
    restored.restore(decode_snapshot(table.snapshot()))
    assert restored.accounts.state == table.accounts.state
    assert restored.accounts.views() == [
        {"name": "alice", "role": SUBMITTER, "admin": False},
        {"name": "carla", "role": VIEWER, "admin": False},
        {"name": "root", "role": ADMIN, "admin": True},
    ]
