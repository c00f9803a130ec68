"""service.transport.context.KeyGuesses: a minute's budget of wrong keys per address."""

from __future__ import annotations

from service.transport.context import KeyGuesses
from tests.support import FakeClock


def test_an_address_is_exhausted_for_the_rest_of_its_minute():
    clock = FakeClock()
    guesses = KeyGuesses(per_minute=3, clock=clock)
    for _ in range(3):
        assert not guesses.exhausted("10.0.0.1")
        guesses.failed("10.0.0.1")
        clock.now += 10
    assert guesses.exhausted("10.0.0.1") and not guesses.exhausted("10.0.0.2")
    clock.now += 31  # the first failure is now a minute old
    assert not guesses.exhausted("10.0.0.1")


def test_memory_holds_only_the_last_minute():
    clock = FakeClock()
    guesses = KeyGuesses(per_minute=2, clock=clock)
    for n in range(1000):
        guesses.failed(f"10.0.{n // 256}.{n % 256}")
        guesses.failed("10.9.9.9")
    assert len(guesses) == 1000 + 1
    clock.now += 61
    guesses.sweep()
    assert len(guesses) == 0
