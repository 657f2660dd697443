"""Hypothesis strategies for what a bot might pass the store: text, ids, times, token counts
and messages, each mixing valid values, values at the edges of the rules, and garbage.

Shared by tests/unit/test_fuzz_validate.py (no database) and
tests/integration/test_fuzz_store.py (every store call against PostgreSQL), which import it
first, so the profile below is loaded before their ``settings`` are read.

Profiles: ``ci`` (the default) is what CI runs: a fixed number of examples, derived from each
test's name instead of a random seed (``derandomize``), so a failure reproduces on every run
and machine, and no example database (nothing is written to ``.hypothesis/``). ``dev`` explores
further with random seeds (``HYPOTHESIS_PROFILE=dev python -m pytest tests/unit``). Tests scale
their own counts from the profile's (``settings.default.max_examples``): more for cheap unit
properties, fewer for those that talk to the database.
"""

from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from store import Message, RateDecision, Turn, User, validate
from store.config import StoreConfig
from store.models import ROLES

settings.register_profile(
    "ci",
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,  # a database round trip's time is not the property under test
    print_blob=True,
    # Database tests reuse one database per test function across its examples on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    parent=settings.get_profile("ci"),
    max_examples=1000,
    derandomize=False,
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def examples(factor: float) -> settings:
    """The profile's example count scaled by ``factor`` (at least 10), as a decorator."""
    count = settings.get_profile(PROFILE).max_examples
    return settings(max_examples=max(10, int(count * factor)))


ONE_MB = 1_000_000
LIMIT = StoreConfig().max_message_bytes
US = timedelta(microseconds=1)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four, else ``bad``; shrinking moves towards ``good``, so a
    failing example keeps only the bad arguments it needs."""
    return st.integers(0, 3).flatmap(lambda i: bad if i == 3 else good)


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
token_counts = mostly(
    st.one_of(st.integers(0, 10_000), st.integers(0, 2**64), edge_integers),
    st.one_of(
        integers,
        st.floats(),
        st.booleans(),
        st.none(),
        st.decimals(allow_nan=True),
        st.text(st.characters(categories=["Nd"]), max_size=4),
    ),
)

# -- time --------------------------------------------------------------------------------------

fixed_offsets = st.timedeltas(
    min_value=-timedelta(hours=24) + US, max_value=timedelta(hours=24) - US
).map(timezone)
zones = st.one_of(st.just(UTC), fixed_offsets, st.timezones())
edge_times = st.sampled_from(
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
        datetime(9999, 12, 31, 12, tzinfo=UTC),
        datetime(1, 1, 1, 0, 30, tzinfo=UTC),
        datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
        datetime(1970, 1, 1, 1, tzinfo=timezone(timedelta(hours=1, microseconds=1))),
    ]
)
aware_times = st.one_of(
    edge_times,
    st.datetimes(timezones=zones),  # years 1 to 9999 in any zone
    st.datetimes(datetime(2020, 1, 1), datetime(2040, 1, 1), timezones=zones),
)
moments = mostly(
    st.one_of(st.none(), aware_times),
    st.one_of(
        st.datetimes(),  # naive
        aware_times.map(datetime.isoformat),
        st.dates(),
        st.floats(),
        st.integers(),
        texts,
    ),
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
ids = mostly(uuids, garbage)
channel_user_ids = mostly(st.one_of(st.text(min_size=1, max_size=20), st.integers()), garbage)
channels = mostly(
    st.sampled_from(["telegram", "whatsapp", "a", "a" * 32]),
    st.one_of(
        st.sampled_from(["a" * 33, "Telegram", "tele gram", "", "télégram"]),
        st.from_regex(r"[a-z][a-z0-9_-]{0,40}", fullmatch=True),
        garbage,
    ),
)
pair_counts = mostly(st.one_of(st.none(), st.integers(1, 5)), st.one_of(edge_integers, garbage))

# -- messages ----------------------------------------------------------------------------------

roles = mostly(st.sampled_from(ROLES), garbage)
contents = mostly(st.text(min_size=1, max_size=20), st.one_of(texts, garbage))
# A message's extra fields: a JSON object, deep, odd or not JSON at all.
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


extras = mostly(
    st.one_of(st.none(), st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
    st.one_of(
        st.sampled_from([100, 5000, 100_000]).map(_nested),
        st.integers(0, 9).map(lambda n: {"too long to print": 10**5000 + n}),
        garbage,
    ),
)
message_dicts = st.fixed_dictionaries(
    {"role": roles, "content": contents},
    optional={"timestamp": moments, "extra": extras},
)
message_objects = st.builds(
    Message,
    role=roles,
    content=contents,
    timestamp=st.one_of(aware_times, garbage),
    extra=extras,
)
one_message = mostly(st.one_of(message_dicts, message_objects), garbage)
message_lists: st.SearchStrategy[Any] = mostly(
    st.lists(one_message, min_size=1, max_size=4),
    st.one_of(
        st.just([]),
        st.sampled_from([validate.MAX_BATCH, validate.MAX_BATCH + 1]).map(
            lambda n: [{"role": "user", "content": "x"}] * n
        ),
        st.lists(one_message, max_size=3).map(tuple),
        st.lists(one_message, max_size=3).map(iter),
        garbage,
    ),
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


# Where an export writes: a text buffer, or anything else (refused as InvalidInput).
writers = mostly(st.builds(io.StringIO), garbage)


def _call(*positional: st.SearchStrategy[Any], **keywords: st.SearchStrategy[Any]) -> Arguments:
    """Positional arguments always given; keyword arguments each given or left out."""
    return st.tuples(st.tuples(*positional), st.fixed_dictionaries({}, optional=keywords))


def _known_or(value: Any, other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return mostly(st.sampled_from([value, str(value)]), other)


def call_arguments(known: Known) -> dict[str, Arguments]:
    """For every public operation of ``Store``/``AsyncStore`` (``store.Operations``): its
    arguments, good and bad."""
    user = _known_or(known.user_id, ids)
    session = _known_or(known.session_id, ids)
    channel = mostly(st.just(known.channel), channels)
    sender = mostly(st.just(known.channel_user_id), channel_user_ids)
    names = mostly(st.one_of(st.none(), st.text(max_size=10)), st.one_of(texts, garbage))
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
    said = mostly(contents, st.one_of(one_message, garbage))
    tokens = {f"{kind}_tokens": token_counts for kind in ("input", "output", "cached")}
    code = mostly(
        st.just(known.code),
        st.one_of(
            st.just(f" {known.code}\n"),
            st.from_regex(r"[0-9]{6}", fullmatch=True),
            texts,
            garbage,
        ),
    )
    return {
        "begin_turn": _call(
            channel, sender, display_name=names, history_pairs=pair_counts, now=moments
        ),
        "finish_turn": _call(turns, said, said, **tokens, max_pairs=pair_counts, now=moments),
        "get_or_create_user": _call(channel, sender, display_name=names, now=moments),
        "find_user": _call(channel, sender),
        "get_or_create_session": _call(user, now=moments),
        "append_messages": _call(session, message_lists, now=moments),
        "trim_session_history": _call(session, pair_counts),
        "clear_session_history": _call(session),
        "get_history": _call(session, pair_counts),
        "check_rate_limit": _call(user, now=moments),
        "track_usage": _call(user, channel, token_counts, token_counts, token_counts, now=moments),
        "register_proactive_user": _call(channel_user_ids, user, now=moments),
        "load_users_from_db": _call(),
        "create_link_code": _call(user, now=moments),
        "redeem_link_code": _call(user, code, now=moments),
        "get_linked_users": _call(user),
        "forget_user": _call(user),
        "forget_person": _call(_known_or(known.person_id, ids)),
        "forget_channel_user": _call(channel, sender),
        "unlink": _call(user, now=moments),
        "export_user": _call(user, writers),
        "export_person": _call(_known_or(known.person_id, ids), writers),
    }


def random_known() -> Known:
    """Ids of rows that do not exist (for tests without a database)."""
    user = User(uuid.uuid4(), "telegram", "42")
    turn = Turn(user, RateDecision(True), datetime(2026, 3, 2, tzinfo=UTC), uuid.uuid4())
    return Known("telegram", "42", user.user_id, uuid.uuid4(), uuid.uuid4(), "7KQ2M9XD4HTR", turn)
