"""`multiactive wan cut/heal` take several links, or every link of a site, in one command."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from multiactive.cli.wan import wan
from multiactive.model.topology import Address
from multiactive.procs import free_port
from multiactive.wan.emulator import WanEmulator, parse_link_spec

NAMES = ("a-to-b", "b-to-a", "a-to-c", "c-to-a", "b-to-c", "c-to-b")


@pytest.fixture
def emulator() -> Iterator[tuple[WanEmulator, str]]:
    """A WAN emulator with six links on free ports, its loop in a thread."""
    specs = [parse_link_spec(f"{n}=127.0.0.1:{free_port()}>127.0.0.1:9") for n in NAMES]
    control = Address("127.0.0.1", free_port())
    emu = WanEmulator(specs, control)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(emu.start(), loop).result(10)
    yield emu, str(control)
    asyncio.run_coroutine_threadsafe(emu.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def states(emu: WanEmulator) -> dict[str, str]:
    return {name: link.state for name, link in emu.links.items()}


def test_cut_and_heal_several_links_at_once(emulator: tuple[WanEmulator, str]) -> None:
    """Two names in one command: both cut, the others untouched; heal both."""
    emu, control = emulator
    result = CliRunner().invoke(wan, ["cut", "a-to-b", "b-to-a", "--control", control])
    assert result.exit_code == 0, result.output
    assert {n for n, s in states(emu).items() if s != "up"} == {"a-to-b", "b-to-a"}
    CliRunner().invoke(wan, ["heal", "a-to-b", "b-to-a", "--control", control])
    assert set(states(emu).values()) == {"up"}


def test_cut_a_site_cuts_every_link_to_and_from_it(emulator: tuple[WanEmulator, str]) -> None:
    """--site c: the four links of c, black-holed; b-to-a and a-to-b stay up."""
    emu, control = emulator
    args = ["cut", "--site", "c", "--mode", "blackhole", "--control", control]
    assert CliRunner().invoke(wan, args).exit_code == 0
    cut = {n for n, s in states(emu).items() if s == "blackhole"}
    assert cut == {"a-to-c", "c-to-a", "b-to-c", "c-to-b"}
    assert CliRunner().invoke(wan, ["heal", "--site", "c", "--control", control]).exit_code == 0
    assert set(states(emu).values()) == {"up"}


def test_a_site_with_no_links_or_no_choice_is_an_error(emulator: tuple[WanEmulator, str]) -> None:
    """An unknown site names the links there are; no name and no site is a usage error."""
    _, control = emulator
    unknown = CliRunner().invoke(wan, ["cut", "--site", "zz", "--control", control])
    assert "no link named zz-to-X or X-to-zz" in str(unknown.exception)
    nothing = CliRunner().invoke(wan, ["cut", "--control", control])
    assert nothing.exit_code == 2
    assert "name at least one link" in nothing.output
