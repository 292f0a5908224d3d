"""Side by side on this machine: multiactive, a NATS JetStream mirror, a RabbitMQ shovel (issue 3).

    .venv/bin/python benchmarks/compare.py [--messages 200000] [--json FILE]
        [--only ours,nats,rabbitmq]

Each system runs two nodes whose traffic crosses one link of our WAN emulator, at 0 ms and at
40 ms round trip, and is measured the same way (1 KiB messages, one client process):

- catch-up: N messages preloaded at the origin, then the time until the other node has them;
- end-to-end latency p50/p99 at 1 000 msg/s;
- acknowledged ingress from one client process, as fast as acknowledgements come back.

Installs the Debian packages `nats-server` and `rabbitmq-server` when they are missing (as
root; otherwise prints the command and exits 1). Prints one table, then the JSON of
everything (also written to --json FILE).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # replication.py and peers/

import replication
from multiactive import __version__
from peers.common import guarded

RTTS_MS = (0.0, 40.0)
RATE = 1000.0
DURATION_S = 12.0
SYSTEMS = ("ours", "nats", "rabbitmq")
DEBIAN_PACKAGES = {"nats": "nats-server", "rabbitmq": "rabbitmq-server"}
PYTHON_CLIENTS = {"nats": ("nats",), "rabbitmq": ("aio_pika", "pika")}
COLUMNS = (
    "system", "RTT", "catch-up msg/s", "catch-up MiB/s", "e2e p50/p99 ms", "ingress msg/s",
    "durability",
)  # fmt: skip

Runner = Callable[[float, int], dict[str, Any]]


def main() -> int:
    args = _arguments()
    chosen = args.only
    if not _ensure_debian_packages(chosen) or not _python_clients_present(chosen):
        return 1
    started = time.monotonic()
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": _machine(),
        "messages": args.messages,
        "latency_rate_msgs_per_s": RATE,
        "latency_duration_s": DURATION_S,
        "results": [_measure(name, rtt, args.messages) for name in chosen for rtt in RTTS_MS],
    }
    report["seconds"] = round(time.monotonic() - started)
    report["load_average_after"] = os.getloadavg()
    print(table(report["results"]))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000, help="backlog size")
    parser.add_argument("--json", type=Path, help="also write the JSON report here")
    parser.add_argument("--only", default=",".join(SYSTEMS), help="comma-separated systems")
    args = parser.parse_args()
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.only) - set(SYSTEMS)
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    return args


# -- prerequisites -----------------------------------------------------------------------


def _ensure_debian_packages(chosen: list[str]) -> bool:
    """Install the peers' Debian packages that are missing; False if that is not possible."""
    missing = [DEBIAN_PACKAGES[n] for n in chosen if n in DEBIAN_PACKAGES]
    missing = [package for package in missing if not _installed(package)]
    if not missing:
        return True
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        print(f"this benchmark needs: sudo {' '.join(command)}", file=sys.stderr)
        return False
    print(f"installing {' '.join(missing)}", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    if "rabbitmq-server" in missing:
        from peers import rabbitmq

        rabbitmq.stop_default_service()
    return True


def _installed(package: str) -> bool:
    query = ["dpkg-query", "-W", "-f=${Status}", package]
    done = subprocess.run(query, capture_output=True, text=True, check=False)
    return done.stdout.strip() == "install ok installed"


def _python_clients_present(chosen: list[str]) -> bool:
    """The peers' Python clients (the `bench` extra) are installed; if not, say how."""
    modules = [m for name in chosen for m in PYTHON_CLIENTS.get(name, ())]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        print(f"missing {', '.join(missing)}: .venv/bin/pip install -e '.[bench]'", file=sys.stderr)
    return not missing


# -- runs --------------------------------------------------------------------------------


def _measure(name: str, rtt_ms: float, messages: int) -> dict[str, Any]:
    print(f"measuring {name} at {rtt_ms:g} ms RTT ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    result = _runner(name)(rtt_ms, messages)
    result["seconds"] = round(time.monotonic() - started)
    if "error" in result:
        print(f"  {name}: {result['error']}", file=sys.stderr)
    return result


def _runner(name: str) -> Runner:
    if name == "ours":
        return _ours
    from peers import nats, rabbitmq

    peer = {"nats": nats, "rabbitmq": rabbitmq}[name]
    return lambda rtt_ms, messages: peer.run(rtt_ms, messages, RATE, DURATION_S)


def _ours(rtt_ms: float, messages: int) -> dict[str, Any]:
    """benchmarks/replication.py with its link through the emulator (fsync on)."""

    def measure() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="multiactive-compare-") as tmp:
            result = replication.run(messages, RATE, DURATION_S, Path(tmp), True, rtt_ms)
        return {"system": "multiactive", "version": __version__, **result}

    return guarded("multiactive", rtt_ms, measure)


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_before": os.getloadavg(),
    }


# -- table -------------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per system and RTT; durability and errors as notes below."""
    notes: dict[str, int] = {}

    def mark(text: str) -> str:
        return f"[{notes.setdefault(text, len(notes) + 1)}]"

    rows = [_row(result, mark) for result in results]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = [_line(COLUMNS, widths), _line(["-" * w for w in widths], widths)]
    lines += [_line(row, widths) for row in rows]
    lines += ["", *(f"[{number}] {text}" for text, number in notes.items())]
    return "\n".join(lines)


def _row(result: dict[str, Any], mark: Callable[[str], str]) -> list[str]:
    system = f"{result['system']} {result.get('version', '')}".strip()
    rtt = f"{result['rtt_ms']:g} ms"
    if "error" in result:
        return [system, rtt, "error " + mark(f"{system} at {rtt}: {result['error']}"), *[""] * 4]
    return [
        system,
        rtt,
        f"{result['catch_up_msgs_per_s']:,}",
        f"{result['catch_up_mib_per_s']}",
        f"{result['latency_p50_ms']} / {result['latency_p99_ms']}",
        f"{result['ingress_msgs_per_s']:,}",
        mark(f"{result['system']}: {result['durability']}"),
    ]


def _line(cells: Sequence[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


if __name__ == "__main__":
    sys.exit(main())
