"""queueing/coalesce.py: calls that come while a round runs go together in the next one; each
call gets its own answer or its own error; a round that fails fails only its own calls."""

from __future__ import annotations

import asyncio

import pytest

from queueing.coalesce import Coalescer


class Rounds:
    """A round function that records each round's items and answers when let go."""

    def __init__(self) -> None:
        self.rounds: list[list[int]] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def run(self, items: list[int]) -> list[int | Exception]:
        self.rounds.append(items)
        self.started.set()
        await self.release.wait()
        if -1 in items:
            raise RuntimeError("the round failed")
        return [ValueError(str(i)) if i < 0 else i * 10 for i in items]


async def test_callers_that_come_during_a_round_share_the_next() -> None:
    rounds = Rounds()
    coalescer: Coalescer[int, int] = Coalescer(rounds.run, "test")
    first = asyncio.create_task(coalescer.call(1))
    await rounds.started.wait()
    later = [asyncio.create_task(coalescer.call(i)) for i in (2, 3, -4)]
    await asyncio.sleep(0)
    rounds.release.set()
    assert await first == 10
    assert await later[0] == 20 and await later[1] == 30
    with pytest.raises(ValueError, match="-4"):
        await later[2]
    assert rounds.rounds == [[1], [2, 3, -4]]


async def test_a_failed_round_fails_its_calls_only() -> None:
    rounds = Rounds()
    rounds.release.set()
    coalescer: Coalescer[int, int] = Coalescer(rounds.run, "test")
    failed = await asyncio.gather(coalescer.call(-1), coalescer.call(5), return_exceptions=True)
    assert all(isinstance(f, RuntimeError) for f in failed)
    assert await coalescer.call(6) == 60  # the next round runs as usual


async def test_a_canceled_caller_is_left_out_of_its_round() -> None:
    rounds = Rounds()
    coalescer: Coalescer[int, int] = Coalescer(rounds.run, "test")
    first = asyncio.create_task(coalescer.call(1))
    await rounds.started.wait()
    gone = asyncio.create_task(coalescer.call(2))
    kept = asyncio.create_task(coalescer.call(3))
    await asyncio.sleep(0)
    gone.cancel()
    rounds.release.set()
    assert (await first, await kept) == (10, 30)
    assert rounds.rounds == [[1], [3]]
