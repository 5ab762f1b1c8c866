"""Concurrent calls of one kind as one statement (issue 14): the web's token lookups and its
enqueues.

A call that arrives while a round runs waits for the next one, which takes every call that came
meanwhile: the batch grows with the load (one round trip, and for a write one commit, serves it
all), and a lone caller pays one round trip, as it would alone. Each call is still answered with
the database's state at its own round: nothing is cached between rounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# A round's answer for each of its calls, in their order: a result, or the error that call
# alone raises (the others are still answered).
Round = Callable[[list[T]], Awaitable[Sequence[R | Exception]]]


class Coalescer(Generic[T, R]):
    def __init__(self, run: Round[T, R], name: str, max_batch: int = 1000) -> None:
        self._run = run
        self._name = name
        self._max_batch = max_batch
        self._calls: list[tuple[T, asyncio.Future[R]]] = []
        self._rounds: asyncio.Task[None] | None = None

    async def call(self, item: T) -> R:
        """The item's answer from the next round that starts (with every call waiting then)."""
        waiter: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._calls.append((item, waiter))
        if self._rounds is None or self._rounds.done():
            self._rounds = asyncio.create_task(self._run_rounds(), name=self._name)
        return await waiter

    async def _run_rounds(self) -> None:
        try:
            await self._rounds_while_called()
        except asyncio.CancelledError:  # shutting down: no call waits for a round that never runs
            for _, waiter in self._calls:
                waiter.cancel()
            self._calls = []
            raise

    async def _rounds_while_called(self) -> None:
        while self._calls:
            due = [(item, waiter) for item, waiter in self._calls if not waiter.done()]
            batch, self._calls = due[: self._max_batch], due[self._max_batch :]
            if not batch:
                continue
            try:
                answers = await self._run([item for item, _ in batch])
            except asyncio.CancelledError:
                for _, waiter in batch:
                    waiter.cancel()
                raise
            except Exception as exc:  # the round failed as a whole: so did each of its calls
                for _, waiter in batch:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            for (_, waiter), answer in zip(batch, answers, strict=True):
                if waiter.done():  # its caller gave up (canceled) meanwhile
                    continue
                if isinstance(answer, Exception):
                    waiter.set_exception(answer)
                else:
                    waiter.set_result(answer)
