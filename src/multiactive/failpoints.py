"""Failpoints: deliberate faults, switched on by name, to prove that checkers catch them.

A testing aid only; never set it in production. A failpoint is one named spot in the code that
misbehaves on purpose when it is switched on, so that a test can show the check guarding that
behaviour fails (`tests/integration/test_chaos.py` breaks counters and expects the chaos checker
to say so). Failpoints are read once per process from the environment variable
`MULTIACTIVE_FAILPOINTS`, a comma-separated list of names:

    MULTIACTIVE_FAILPOINTS=counter_applied_twice multiactive site run ...

An unknown name is an error that lists the known ones, so a typo cannot silently test nothing.

    counter_applied_twice   the processor hands every counter.add op to the state twice
                            (`replication/processor.py`), so counters grow by double deltas
    clock_behind            the site's version clock reads the wall clock 50 ms late
                            (`site/node.py`): clock skew between datacenters, which causal
                            sessions must overcome
"""

from __future__ import annotations

import functools
import os

from multiactive.errors import ConfigError

ENV_VAR = "MULTIACTIVE_FAILPOINTS"
COUNTER_APPLIED_TWICE = "counter_applied_twice"
CLOCK_BEHIND = "clock_behind"
CLOCK_BEHIND_MS = 50
KNOWN = {
    COUNTER_APPLIED_TWICE: "the processor applies every counter.add op twice",
    CLOCK_BEHIND: f"the site's version clock runs {CLOCK_BEHIND_MS} ms behind the wall clock",
}


def parse(text: str) -> frozenset[str]:
    """The failpoint names in a comma-separated list; unknown names are a `ConfigError`."""
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(names - KNOWN.keys())
    if unknown:
        raise ConfigError(
            f"unknown failpoint {', '.join(map(repr, unknown))} in {ENV_VAR}={text!r}; "
            f"known failpoints: {', '.join(sorted(KNOWN))}"
        )
    return names


@functools.cache
def enabled() -> frozenset[str]:
    """The failpoints switched on in this process (the environment is read once)."""
    return parse(os.environ.get(ENV_VAR, ""))


def active(name: str) -> bool:
    """Whether the failpoint `name` is switched on; `name` must be a known failpoint."""
    if name not in KNOWN:
        raise ConfigError(f"unknown failpoint {name!r}; known failpoints: {', '.join(KNOWN)}")
    return name in enabled()
