"""Erasure: ``forget_user`` and ``forget_person`` remove everything the store holds about them.

One transaction (the ``sk_forget`` function, revision 0004) deletes the users row(s), their
sessions and history, archived sessions, quarantined legacy messages, link codes (made or
redeemed), link-code failures, rate-limit windows and proactive registrations; a person left
without users goes too. Usage is kept only as anonymous aggregates: raw ``usage_stats`` rows
are deleted after anything not yet rolled up was added to ``usage_daily``, and the user's daily
totals are merged into those of ``ANONYMOUS_USER_ID``. Tables of other subsystems are not
touched: if one still references the user, nothing is erased and ``ErasureBlocked`` says which.

Like every operation these are plans (see core.py), run by ``Store``/``AsyncStore`` methods
and by the module-level functions of the default store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

from . import core, errors, validate
from .config import StoreConfig

ANONYMOUS_USER_ID = UUID(int=0)


@dataclass(frozen=True)
class Forgotten:
    """What an erasure did: rows deleted per table, and rows re-keyed to the anonymous id;
    ``user_id``, the user erased (None for a person, or for an identity without a users row,
    of which ``forget_channel_user`` erased only what integrations keep under it)."""

    deleted: Mapping[str, int]
    anonymised: Mapping[str, int]
    user_id: UUID | None = None

    def lines(self) -> list[str]:
        return [f"{table}: {n} deleted" for table, n in self.deleted.items()] + [
            f"{table}: {n} anonymised" for table, n in self.anonymised.items()
        ]


def forget_user(config: StoreConfig, user_id: UUID | str) -> core.Plan[Forgotten]:
    """Erase one user (its person too, when no other user is linked to it)."""
    checked = validate.uuid(user_id, "user_id")
    return _forget(
        {"user_id": checked, "person_id": None}, f"user {checked} does not exist", checked
    )


def forget_person(config: StoreConfig, person_id: UUID | str) -> core.Plan[Forgotten]:
    """Erase a person and every user linked to it."""
    checked = validate.uuid(person_id, "person_id")
    return _forget({"user_id": None, "person_id": checked}, f"person {checked} does not exist")


def forget_channel_user(
    config: StoreConfig, channel: str, channel_user_id: str | int
) -> core.Plan[Forgotten]:
    """Erase the user of a channel identity, like ``forget_user``; or, when it has no users row
    (a bot on python-telegram-bot's persistence without ``TelegramTurns`` never makes one),
    what integrations keep under the identity: its ``telegram_persistence`` rows (user_data,
    its private chat's chat_data, conversation entries keyed by it). ``NotFound`` when
    neither exists (nothing is changed)."""
    params = {
        "channel": validate.channel(config, channel),
        "channel_user_id": validate.identifier(channel_user_id, "channel_user_id"),
    }
    found = yield core.Step("find_user", params)
    if found:
        user_id: UUID = found[0]["user_id"]
        rows = yield core.Step("forget", {"user_id": user_id, "person_id": None})
        if rows:  # else erased meanwhile: what is left is under the identity alone
            return _done(rows, user_id)
    rows = yield core.Step("forget_telegram_identity", params)
    deleted = int(rows[0]["deleted"])
    if not deleted:
        raise errors.NotFound(
            f"no user {params['channel_user_id']!r} on channel {params['channel']!r}"
        )
    return Forgotten({"telegram_persistence": deleted}, {})


def _forget(
    params: Mapping[str, object], missing: str, user_id: UUID | None = None
) -> core.Plan[Forgotten]:
    rows = yield core.Step("forget", params)
    if not rows:
        raise errors.NotFound(missing)
    return _done(rows, user_id)


def _done(rows: core.Rows, user_id: UUID | None) -> Forgotten:
    for row in rows:
        if row["table_name"] == "blocked":
            raise errors.ErasureBlocked(
                f"nothing was erased: a table sessionkeeper does not own still references"
                f" them ({row['action']})"
            )
    done: dict[str, dict[str, int]] = {"deleted": {}, "anonymised": {}}
    for row in rows:
        done[row["action"]][row["table_name"]] = int(row["row_count"])
    return Forgotten(done["deleted"], done["anonymised"], user_id)
