"""The reconciler's decisions as pure functions: what is behind, what to re-drive, whom to ask.

No I/O and no clock: the facts (lags, link states, dead letters, re-drive history, the time)
come in as arguments, the decisions go out as values. `replication/reconciler.py` gathers the
facts and carries the decisions out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

from multiactive.model.message import StreamId
from multiactive.records import BehindStream, StreamLag
from multiactive.state.base import DeadLetter

REDRIVE_BACKOFF_CAP = 10  # the re-drive interval doubles at most this many times

LetterKey = tuple[str, int, int]  # (origin, partition, seq)


def streams_behind(
    site: str, lags: Iterable[StreamLag], link_state: Callable[[str], str | None]
) -> tuple[list[BehindStream], list[str]]:
    """Streams with lag, each with the state of the link from its origin ("local" for this
    site's own), and a problem for each one behind a cut or stalled link."""
    behind, problems = [], []
    for lag in lags:
        if lag.lag_messages <= 0:
            continue
        state = link_state(lag.origin) or "local"
        behind.append(BehindStream(**asdict(lag), link_state=state))
        if state in ("cut", "stalled"):
            problems.append(
                f"{lag.origin}/{lag.partition}: {lag.lag_messages} messages behind; "
                f"link {lag.origin}->{site} is {state}"
            )
    return behind, problems


def refetch_sources(stream: StreamId, sites: Sequence[str], local: str) -> list[str]:
    """Whom to ask for a missing range: its origin first, then every other site."""
    return list(dict.fromkeys(s for s in (stream.origin, *sites) if s != local))


@dataclass(slots=True)
class RedriveHistory:
    """What the reconciler did with one dead letter so far."""

    attempts: int = 0
    next_s: float = 0.0
    gave_up: bool = False


@dataclass(slots=True)
class RedrivePlan:
    due: list[DeadLetter] = field(default_factory=list)  # re-drive these now
    given_up: list[DeadLetter] = field(default_factory=list)  # just ran out of re-drives
    problems: list[str] = field(default_factory=list)


def plan_redrives(
    letters: Iterable[DeadLetter],
    history: dict[LetterKey, RedriveHistory],
    now_s: float,
    max_attempts: int,
) -> RedrivePlan:
    """Which dead letters to re-drive now (their backoff has passed) and which to give up on
    (re-driven `max_attempts` times already; they stay listed for `multiactive replay`, and
    among the problems of every run while parked). Updates `history` for those given up."""
    plan = RedrivePlan()
    for letter in letters:
        state = history.setdefault(letter_key(letter), RedriveHistory())
        if state.gave_up:  # still parked: a problem in every report until replayed
            plan.problems.append(_still_fails(letter, state))
            continue
        if state.next_s > now_s:
            continue
        if state.attempts >= max_attempts:
            state.gave_up = True
            plan.given_up.append(letter)
            plan.problems.append(_still_fails(letter, state))
            continue
        plan.due.append(letter)
    return plan


def _still_fails(letter: DeadLetter, state: RedriveHistory) -> str:
    return (
        f"dead letter {letter.id} ({letter.type} {letter.key!r}) still fails after "
        f"{state.attempts} re-drives: {letter.error}; fix the handler, then replay"
    )


def redriven(state: RedriveHistory, now_s: float, interval_s: float) -> None:
    """One more re-drive: the next waits twice as long (up to 2**REDRIVE_BACKOFF_CAP)."""
    state.attempts += 1
    state.next_s = now_s + interval_s * 2 ** min(state.attempts, REDRIVE_BACKOFF_CAP)


def letter_key(letter: DeadLetter) -> LetterKey:
    return (letter.origin, letter.partition, letter.seq)
