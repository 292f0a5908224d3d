"""`multiactive wan`: the WAN link emulator and its controls."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from typing import Any

import click

from multiactive import aio, logs
from multiactive.errors import ConfigError
from multiactive.model.topology import parse_address
from multiactive.wan.emulator import WanEmulator, parse_link_spec, run_emulator

DEFAULT_CONTROL = "127.0.0.1:9900"


@click.group()
def wan() -> None:
    """Emulate long-haul links (delay, jitter, bandwidth, cut/heal) between sites."""


@wan.command("run")
@click.option(
    "--link",
    "links",
    multiple=True,
    required=True,
    metavar="SPEC",
    help="NAME=LISTEN>TARGET[,delay_ms=N][,jitter_ms=N][,bandwidth_mbps=N]; repeatable.",
)
@click.option("--control", default=DEFAULT_CONTROL, help="HTTP control endpoint address.")
@click.option("--log-level", default="INFO", help="Lowest log level written to stderr.")
def run(links: tuple[str, ...], control: str, log_level: str) -> None:
    """Run the emulated links until SIGTERM or SIGINT."""
    logs.configure(log_level)
    specs = [parse_link_spec(text) for text in links]
    emulator = WanEmulator(specs, parse_address(control, "--control"))
    for spec in specs:
        click.echo(f"link {spec}", err=True)
    aio.run(_serve(emulator))


async def _serve(emulator: WanEmulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_emulator(emulator, stop)


def _call(control: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    address = parse_address(control, "--control")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{address}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        raise ConfigError(f"{path}: {exc.read().decode(errors='replace')}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot reach the WAN emulator at {address} (--control): {exc}") from exc


control_option = click.option(
    "--control", default=DEFAULT_CONTROL, help="The emulator's control endpoint."
)


@wan.command("show")
@control_option
def show(control: str) -> None:
    """Print every emulated link's state and counters as JSON."""
    click.echo(json.dumps(_call(control, "GET", "/links"), indent=2))


def _chosen(control: str, names: tuple[str, ...], sites: tuple[str, ...]) -> list[str]:
    """The links named, and every link to or from each site (links named ORIGIN-to-RECEIVER,
    as `multiactive demo` and the local cluster name them)."""
    if not names and not sites:
        raise click.UsageError("name at least one link, or a site with --site")
    known = [link["name"] for link in _call(control, "GET", "/links")]
    chosen = list(names)
    for site in sites:
        ends = [n for n in known if site in n.split("-to-", 1) and "-to-" in n]
        if not ends:
            raise ConfigError(
                f"--site {site}: no link named {site}-to-X or X-to-{site}; "
                f"links: {', '.join(known)}"
            )
        chosen += [n for n in ends if n not in chosen]
    return chosen


site_select = click.option(
    "--site", "sites", multiple=True,
    help="Also every link to and from this site (links named ORIGIN-to-RECEIVER); repeatable.",
)  # fmt: skip


@wan.command("cut")
@click.argument("names", nargs=-1)
@site_select
@click.option(
    "--mode",
    type=click.Choice(["reset", "blackhole"]),
    default="reset",
    help="reset: abort connections and refuse new ones; blackhole: move no bytes.",
)
@control_option
def cut(names: tuple[str, ...], sites: tuple[str, ...], mode: str, control: str) -> None:
    """Cut the links NAMES (and with --site, every link of a site), in one command."""
    for name in _chosen(control, names, sites):
        click.echo(json.dumps(_call(control, "POST", f"/links/{name}/cut", {"mode": mode})))


@wan.command("heal")
@click.argument("names", nargs=-1)
@site_select
@control_option
def heal(names: tuple[str, ...], sites: tuple[str, ...], control: str) -> None:
    """Heal the links NAMES (and with --site, every link of a site)."""
    for name in _chosen(control, names, sites):
        click.echo(json.dumps(_call(control, "POST", f"/links/{name}/heal", {})))


@wan.command("shape")
@click.argument("name")
@click.option("--delay-ms", type=float, help="One-way delay.")
@click.option("--jitter-ms", type=float, help="Delivery time varies within +- this.")
@click.option("--bandwidth-mbps", type=float, help="Cap in megabits per second; 0: none.")
@control_option
def shape(
    name: str,
    delay_ms: float | None,
    jitter_ms: float | None,
    bandwidth_mbps: float | None,
    control: str,
) -> None:
    """Change the delay, jitter or bandwidth of link NAME."""
    values = {"delay_ms": delay_ms, "jitter_ms": jitter_ms, "bandwidth_mbps": bandwidth_mbps}
    body = {k: v for k, v in values.items() if v is not None}
    click.echo(json.dumps(_call(control, "POST", f"/links/{name}/shape", body)))
