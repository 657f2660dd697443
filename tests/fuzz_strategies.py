"""Hypothesis strategies for what a bot might pass the store: text, ids, times, token counts
and messages, each mixing valid values, values at the edges of the rules, and garbage.

Shared by tests/unit/test_fuzz_validate.py (no database) and
tests/integration/test_fuzz_store.py (every store call against PostgreSQL).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from store import Message, RateDecision, Turn, User, validate
from store.config import StoreConfig
from store.schema import ROLES

ONE_MB = 1_000_000
LIMIT = StoreConfig().max_message_bytes
US = timedelta(microseconds=1)

# -- text --------------------------------------------------------------------------------------

surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
combining = st.text(st.characters(categories=["Mn", "Mc", "Me"]), min_size=1, max_size=8)
any_characters = st.text(st.characters(exclude_categories=[]), max_size=40)


def _sized(size: int) -> st.SearchStrategy[str]:
    """A string of ``size`` characters: one short piece repeated (generating 1 MB of fresh
    text per example would be slow and tell nothing more)."""
    piece = st.text(min_size=1, max_size=3)
    return piece.map(lambda p: (p * (size // len(p) + 1))[:size])


big_text = st.sampled_from([LIMIT - 1, LIMIT, LIMIT + 1, ONE_MB]).flatmap(_sized)
tricky_text = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\x00",
        "\ud800",
        "a\udfff",
        "e\u0301\u0301\u0301",
        "\ufeff",
        "\U0010ffff",
        "\u202e\u200d",
        "'; DROP TABLE users; --",
        "%(now)s",
        "\\x00",
        "x" * 256,
        "x" * 257,
        "é" * (LIMIT // 2),
        "é" * (LIMIT // 2 + 1),
        "x" * ONE_MB + "\x00",
    ]
)
texts = st.one_of(
    st.text(max_size=40),
    any_characters,
    surrogates,
    st.builds(lambda a, m, b: a + m + b, st.text(max_size=5), surrogates, st.text(max_size=5)),
    combining,
    tricky_text,
    big_text,
)

# -- numbers -----------------------------------------------------------------------------------

edge_integers = st.sampled_from(
    [
        0,
        1,
        -1,
        validate.MAX_TOKENS,
        validate.MAX_TOKENS + 1,
        2**31,
        2**62,
        2**63 - 1,
        2**63,
        -(2**63) - 1,
        2**64,
        10**30,
        10**256 - 1,
        10**256,
        10**5000,
        -(10**5000),
    ]
)
integers = st.one_of(st.integers(), st.integers(-(2**70), 2**70), edge_integers)
token_counts = st.one_of(
    st.integers(0, validate.MAX_TOKENS),
    integers,
    st.floats(),
    st.booleans(),
    st.none(),
    st.decimals(allow_nan=True),
    st.text(st.characters(categories=["Nd"]), max_size=4),
)

# -- time --------------------------------------------------------------------------------------

fixed_offsets = st.timedeltas(
    min_value=-timedelta(hours=24) + US, max_value=timedelta(hours=24) - US
).map(timezone)
zones = st.one_of(st.just(UTC), fixed_offsets, st.timezones())
aware_times = st.one_of(
    st.datetimes(timezones=zones),  # years 1 to 9999 in any zone
    st.datetimes(datetime(2020, 1, 1), datetime(2040, 1, 1), timezones=zones),
    st.sampled_from(
        [
            validate.EARLIEST,
            validate.EARLIEST - US,
            validate.LATEST - US,
            validate.LATEST,
            datetime.min.replace(tzinfo=UTC),
            datetime.max.replace(tzinfo=UTC),
            datetime.min.replace(tzinfo=timezone(timedelta(hours=14))),
            datetime.max.replace(tzinfo=timezone(timedelta(hours=-14))),
            datetime(9999, 12, 31, 23, 55, tzinfo=UTC),
            datetime(1, 1, 1, 0, 30, tzinfo=UTC),
            datetime(1970, 1, 1, 1, tzinfo=timezone(timedelta(hours=1, microseconds=1))),
        ]
    ),
)
moments = st.one_of(
    st.none(),
    aware_times,
    st.datetimes(),  # naive
    aware_times.map(datetime.isoformat),
    st.dates(),
    st.floats(),
    st.integers(),
    texts,
)

# -- ids ---------------------------------------------------------------------------------------

uuids = st.one_of(
    st.uuids(),
    st.uuids().map(str),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: "{" + str(u).upper() + "}"),
    st.uuids().map(lambda u: f"urn:uuid:{u}"),
    st.just(uuid.UUID(int=0)),
)
garbage = st.one_of(
    st.none(),
    st.booleans(),
    integers,
    st.floats(),
    texts,
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(object()),
)
ids = st.one_of(uuids, garbage)
channel_user_ids = st.one_of(st.text(min_size=1, max_size=20), integers, garbage)
channels = st.one_of(
    st.sampled_from(["telegram", "whatsapp", "a", "a" * 32, "a" * 33, "Telegram", "tele gram"]),
    st.from_regex(r"[a-z][a-z0-9_-]{0,40}", fullmatch=True),
    garbage,
)
pair_counts = st.one_of(st.none(), st.integers(-2, 5), edge_integers, st.integers(), garbage)

# -- messages ----------------------------------------------------------------------------------

roles = st.one_of(st.sampled_from(ROLES), garbage)
message_dicts = st.fixed_dictionaries(
    {"role": roles, "content": st.one_of(texts, garbage)},
    optional={"timestamp": moments, "extra": garbage},
)
message_objects = st.builds(
    Message,
    role=roles,
    content=st.one_of(texts, garbage),
    timestamp=st.one_of(aware_times, garbage),
)
valid_messages = st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES), "content": st.text(min_size=1, max_size=20)},
    optional={"timestamp": aware_times},
)
one_message = st.one_of(valid_messages, message_dicts, message_objects, garbage)
message_lists: st.SearchStrategy[Any] = st.one_of(
    st.lists(one_message, max_size=4),
    st.lists(valid_messages, min_size=1, max_size=4),
    st.sampled_from([validate.MAX_BATCH, validate.MAX_BATCH + 1]).map(
        lambda n: [{"role": "user", "content": "x"}] * n
    ),
    st.lists(one_message, max_size=3).map(tuple),
    st.lists(one_message, max_size=3).map(iter),
    garbage,
)


# -- every store call's arguments --------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """Real ids of the example's arranged rows, mixed into the generated arguments so that
    calls also reach the database with good ids next to bad other arguments."""

    channel: str
    channel_user_id: str
    user_id: uuid.UUID
    session_id: uuid.UUID
    person_id: uuid.UUID
    code: str
    turn: Turn


Arguments = st.SearchStrategy[tuple[tuple[Any, ...], dict[str, Any]]]


def _call(*positional: st.SearchStrategy[Any], **keywords: st.SearchStrategy[Any]) -> Arguments:
    """Positional arguments always given; keyword arguments each given or left out."""
    return st.tuples(st.tuples(*positional), st.fixed_dictionaries({}, optional=keywords))


def _known_or(value: Any, other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(value), st.just(str(value)), other)


def call_arguments(known: Known) -> dict[str, Arguments]:
    """For every public operation of ``Store``/``AsyncStore`` (``store.Operations``): its
    arguments, good and bad."""
    user = _known_or(known.user_id, ids)
    session = _known_or(known.session_id, ids)
    channel = st.one_of(st.just(known.channel), channels)
    sender = st.one_of(st.just(known.channel_user_id), channel_user_ids)
    names = st.one_of(st.none(), texts, garbage)
    turns = st.one_of(
        st.just(known.turn),
        session,
        st.builds(
            Turn,
            user=st.just(known.turn.user),
            rate=st.builds(RateDecision, st.booleans()),
            started_at=st.one_of(aware_times, garbage),
            session_id=session,
        ),
        garbage,
    )
    said = st.one_of(texts, one_message, garbage)
    tokens = {f"{kind}_tokens": token_counts for kind in ("input", "output", "cached")}
    code = st.one_of(
        st.just(known.code),
        st.just(f" {known.code}\n"),
        st.from_regex(r"[0-9]{6}", fullmatch=True),
        texts,
        garbage,
    )
    return {
        "begin_turn": _call(
            channel, sender, display_name=names, history_pairs=pair_counts, now=moments
        ),
        "finish_turn": _call(turns, said, said, **tokens, max_pairs=pair_counts, now=moments),
        "get_or_create_user": _call(channel, sender, display_name=names, now=moments),
        "get_or_create_session": _call(user, now=moments),
        "append_messages": _call(session, message_lists, now=moments),
        "trim_session_history": _call(session, pair_counts),
        "get_history": _call(session, pair_counts),
        "check_rate_limit": _call(user, now=moments),
        "track_usage": _call(user, channel, token_counts, token_counts, token_counts, now=moments),
        "register_proactive_user": _call(st.one_of(channel_user_ids, texts), user, now=moments),
        "load_users_from_db": _call(),
        "create_link_code": _call(user, now=moments),
        "redeem_link_code": _call(user, code, now=moments),
        "get_linked_users": _call(user),
        "forget_user": _call(user),
        "forget_person": _call(_known_or(known.person_id, ids)),
    }


def random_known() -> Known:
    """Ids of rows that do not exist (for tests without a database)."""
    user = User(uuid.uuid4(), "telegram", "42")
    turn = Turn(user, RateDecision(True), datetime(2026, 3, 2, tzinfo=UTC), uuid.uuid4())
    return Known("telegram", "42", user.user_id, uuid.uuid4(), uuid.uuid4(), "123456", turn)
