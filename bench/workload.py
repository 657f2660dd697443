"""The data the benchmarks send: chat-like text of given sizes, message pairs, histories.

Text is drawn from a fixed pseudo-vocabulary with a seeded generator, so that every run sends the
same bytes and TOAST compression sees text about as compressible as real chat (not a repeated
string that compresses to nothing).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

CHANNEL = "telegram"
USER_BYTES = 300
REPLY_BYTES = 600  # a user message and its reply: the 900-byte pair of the issue
HISTORY_PAIRS = 20  # 40 messages: the seed's trim limit, a full history

_rng = random.Random(8)
_VOCABULARY = [
    "".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_rng.randint(2, 9)))
    for _ in range(3000)
]


def text(size: int, seed: int) -> str:
    """``size`` characters of words, the same for the same ``seed``."""
    rng = random.Random(seed)
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_VOCABULARY)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def timestamp() -> str:
    return datetime.now(UTC).isoformat()


def pair(
    seed: int, user_bytes: int = USER_BYTES, reply_bytes: int = REPLY_BYTES
) -> list[dict[str, str]]:
    now = timestamp()
    return [
        {"role": "user", "content": text(user_bytes, seed * 2), "timestamp": now},
        {"role": "assistant", "content": text(reply_bytes, seed * 2 + 1), "timestamp": now},
    ]


def history(
    pairs: int, user_bytes: int = USER_BYTES, reply_bytes: int = REPLY_BYTES
) -> list[dict[str, str]]:
    """``pairs`` user/assistant pairs, oldest first."""
    return [m for i in range(pairs) for m in pair(10_000 + i, user_bytes, reply_bytes)]


def channel_user_ids(count: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i:07d}" for i in range(count)]


def assigned(users: list[str], workers: int, worker: int) -> list[str]:
    """The users one worker serves: each user's messages come in order, as in a real bot."""
    return users[worker::workers]
