"""Link codes without a database: the redraw loop of ``create_link_code`` and how each outcome
of ``sk_redeem_link_code`` becomes a result or a typed error."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

import store
from store import core, validate
from store.config import StoreConfig

from .in_memory import InMemoryDatabase, Rows, one

T0 = datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC)
USER = uuid4()


def well_formed(code: object) -> bool:
    """A code the store itself would accept from a user, as drawn (12 symbols of base32)."""
    return isinstance(code, str) and validate.link_code(code) == code and len(code) == 12


def key_of(shown: str) -> str:
    """What the store sends for a code as shown to a user: only its key, never the code."""
    return validate.link_code_key(validate.link_code(shown))


def is_key(value: object) -> bool:
    return isinstance(value, str) and value.startswith("h:") and len(value) == 2 + 64


def granted(step: core.Step) -> Rows:
    """The insert succeeds (the database returns no code: it stores only its hash)."""
    return one(expires_at=T0 + timedelta(minutes=10))


def clashes_then_granted(clashes: int) -> Callable[[core.Step], Rows]:
    """The first ``clashes`` inserts hit a stored code (ON CONFLICT DO NOTHING: no row)."""
    left = [clashes]

    def answer(step: core.Step) -> Rows:
        if left[0] == 0:
            return granted(step)
        left[0] -= 1
        return []

    return answer


def test_a_free_code_is_taken_at_the_first_draw(config: StoreConfig) -> None:
    db = InMemoryDatabase(create_link_code=granted)
    code = db.call(core.create_link_code, config, str(USER), now=T0)
    assert db.names() == ["create_link_code"]
    sent = db.sent[0].params
    assert well_formed(validate.link_code(code.code)) and sent["code_key"] == key_of(code.code)
    assert validate.link_code(code.code) not in map(str, sent.values())
    assert sent["user_id"] == USER and sent["now"] == T0 and sent["ttl"] == config.link_code_ttl
    assert code.expires_at == T0 + timedelta(minutes=10)


def test_a_clash_draws_again_with_the_same_parameters(config: StoreConfig) -> None:
    clashes = 3
    db = InMemoryDatabase(create_link_code=clashes_then_granted(clashes))
    code = db.call(core.create_link_code, config, USER, now=T0)
    assert db.names() == ["create_link_code"] * (clashes + 1)
    assert key_of(code.code) == db.sent[-1].params["code_key"]
    for step in db.sent:
        assert {k: v for k, v in step.params.items() if k != "code_key"} == {
            "user_id": USER,
            "now": T0,
            "ttl": config.link_code_ttl,
        }
        assert is_key(step.params["code_key"])
    assert len({step.params["code_key"] for step in db.sent}) == clashes + 1


def test_the_last_allowed_draw_still_succeeds(config: StoreConfig) -> None:
    db = InMemoryDatabase(create_link_code=clashes_then_granted(core.LINK_CODE_DRAWS - 1))
    code = db.call(core.create_link_code, config, USER)
    assert key_of(code.code) == db.sent[-1].params["code_key"]
    assert len(db.sent) == core.LINK_CODE_DRAWS


def test_drawing_stops_at_its_limit_with_a_store_error(config: StoreConfig) -> None:
    db = InMemoryDatabase(create_link_code=lambda step: [])
    with pytest.raises(store.StoreError, match=f"no free link code after {core.LINK_CODE_DRAWS}"):
        db.call(core.create_link_code, config, USER)
    assert len(db.sent) == core.LINK_CODE_DRAWS == 20


def test_draws_are_spread_over_the_whole_code_space(config: StoreConfig) -> None:
    # 20 draws from 2^60: a repeat is all but impossible; a constant or short-range draw
    # (a broken generator) would fail here.
    db = InMemoryDatabase(create_link_code=lambda step: [])
    with pytest.raises(store.StoreError):
        db.call(core.create_link_code, config, USER)
    assert len({step.params["code_key"] for step in db.sent}) == core.LINK_CODE_DRAWS
    granting = InMemoryDatabase(create_link_code=granted)
    codes = [
        validate.link_code(granting.call(core.create_link_code, config, USER).code)
        for _ in range(core.LINK_CODE_DRAWS)
    ]
    assert len(set(codes)) == core.LINK_CODE_DRAWS
    assert len(set("".join(codes))) >= 24  # 240 symbols drawn from 32 cover nearly all


# -- redemption --------------------------------------------------------------------------------

PERSON, OWNER = uuid4(), uuid4()


def redeem(config: StoreConfig, row: Rows) -> tuple[store.Linked, InMemoryDatabase]:
    db = InMemoryDatabase(redeem_link_code=[row])
    return db.call(core.redeem_link_code, config, USER, " 7kq2-m9xd 4htr ", now=T0), db


def outcome(name: str, locked_until: datetime | None = None) -> Rows:
    return one(outcome=name, person_id=None, owner_id=None, locked_until=locked_until)


def test_linked_outcome_returns_the_person_and_the_codes_owner(config: StoreConfig) -> None:
    linked, db = redeem(
        config, one(outcome="linked", person_id=PERSON, owner_id=OWNER, locked_until=None)
    )
    assert linked == store.Linked(person_id=PERSON, owner_id=OWNER)
    assert db.sent[0].params == {
        "user_id": USER,
        # Only the key of the code as typed (case, blanks and dashes do not matter): the code
        # itself never reaches the server's logs.
        "code_key": validate.link_code_key("7KQ2M9XD4HTR"),
        "now": T0,
        "max_failures": config.link_max_failures,
        "failure_window": config.link_failure_window,
        "lockout": config.link_lockout,
        "max_daily_failures": config.link_max_daily_failures,
    }


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("invalid", store.LinkCodeInvalid, "no such link code, or it was already used"),
        ("own", store.LinkCodeInvalid, "your own link code"),
        ("expired", store.LinkCodeExpired, "has expired"),
    ],
)
def test_failed_outcomes_raise_their_link_code_error(
    config: StoreConfig, name: str, error: type[store.LinkCodeError], message: str
) -> None:
    with pytest.raises(error, match=message) as raised:
        redeem(config, outcome(name))
    assert isinstance(raised.value, store.LinkCodeError) and type(raised.value) is error


def test_locked_outcome_carries_locked_until(config: StoreConfig) -> None:
    until = T0 + timedelta(minutes=15)
    with pytest.raises(store.LinkCodeLocked) as raised:
        redeem(config, outcome("locked", locked_until=until))
    assert raised.value.locked_until == until
    assert until.isoformat() in str(raised.value)


def test_the_failure_that_reaches_the_cap_still_reports_its_own_outcome(
    config: StoreConfig,
) -> None:
    # sk_redeem_link_code returns the lock-out time with the wrong code that caused it; the
    # caller is told what was wrong with this code, and the next attempt is told "locked".
    with pytest.raises(store.LinkCodeInvalid):
        redeem(config, outcome("invalid", locked_until=T0 + timedelta(minutes=15)))


@pytest.mark.parametrize(
    "code", ["12345", "1234567", "abcdef", "", None, 123456, "12 456", "7KQ2-M9XD-4HTU", "7KQ2"]
)
def test_a_malformed_code_never_reaches_the_database(config: StoreConfig, code: object) -> None:
    db = InMemoryDatabase()
    with pytest.raises(store.InvalidInput) as raised:
        db.call(core.redeem_link_code, config, USER, code)  # type: ignore[arg-type]
    assert raised.value.field == "code" and db.sent == []


@pytest.mark.parametrize("code", ["123456", " 123 456 ", "123-456"])
def test_a_six_digit_code_of_the_previous_release_is_outdated(
    config: StoreConfig, code: str
) -> None:
    db = InMemoryDatabase()
    with pytest.raises(store.LinkCodeOutdated, match="ask for a new code"):
        db.call(core.redeem_link_code, config, USER, code)
    assert db.sent == []  # never sent, so never counted as a failure


def test_link_code_errors_share_one_base() -> None:
    errors = (store.LinkCodeInvalid, store.LinkCodeExpired, store.LinkCodeLocked)
    for error in (*errors, store.LinkCodeOutdated):
        assert issubclass(error, store.LinkCodeError) and issubclass(error, store.StoreError)
