"""An in-memory database for the core's plans (after procrastinate's ``InMemoryConnector``).

``InMemoryDatabase`` runs a plan the way ``Store.execute`` does (``core.Runner``: run each step,
feed its rows back), but answers each named statement with rows the test scripted, and records
every step it was sent. It checks what a real server would refuse outright: a statement name
missing from ``queries.sql``, and parameters that differ from the statement's placeholders.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Concatenate, ParamSpec, TypeVar

from store import core
from store.config import StoreConfig
from store.queries import QUERIES

P = ParamSpec("P")
T = TypeVar("T")
Rows = list[dict[str, Any]]
Answer = Callable[[core.Step], Rows]

# psycopg's named placeholders: %(name)s (text or binary chosen by psycopg), %(name)b, %(name)t.
_PLACEHOLDER = re.compile(r"%\((\w+)\)[sbt]")


def placeholders(sql: str) -> set[str]:
    return set(_PLACEHOLDER.findall(sql))


class InMemoryDatabase:
    """Scripted answers per statement name: a list of row lists (one per execution, in order)
    or a function of the step. ``sent`` holds every step, in order."""

    def __init__(self, **answers: Iterable[Rows] | Answer) -> None:
        self.sent: list[core.Step] = []
        self._answers: dict[str, deque[Rows] | Answer] = {
            name: answer if callable(answer) else deque(answer) for name, answer in answers.items()
        }

    def names(self) -> list[str]:
        return [step.name for step in self.sent]

    def call(
        self,
        plan_function: Callable[Concatenate[StoreConfig, P], core.Plan[T]],
        config: StoreConfig,
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Build the plan as a store method does (input checks happen here) and run it."""
        return self.run(plan_function(config, *args, **kwargs))

    def run(self, plan: core.Plan[T]) -> T:
        runner = core.Runner(plan)
        for step in runner:
            self.sent.append(step)
            runner.feed(self._answer(step))
        return runner.result

    def _answer(self, step: core.Step) -> Rows:
        assert step.name in QUERIES, f"no statement {step.name!r} in queries.sql"
        assert set(step.params) == placeholders(step.sql), (
            f"{step.name}: parameters {sorted(step.params)} != placeholders"
            f" {sorted(placeholders(step.sql))}"
        )
        answer = self._answers.get(step.name)
        if answer is None:
            raise AssertionError(f"unexpected statement {step.name!r}")
        if callable(answer):
            return answer(step)
        if not answer:
            raise AssertionError(f"statement {step.name!r} ran more often than scripted")
        return answer.popleft()


def one(**row: Any) -> Rows:
    """A result of one row."""
    return [dict(row)]
