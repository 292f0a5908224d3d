"""Side by side on this machine: multiactive, a NATS JetStream mirror, a RabbitMQ shovel (issue 3).

    .venv/bin/python benchmarks/compare.py [--messages 200000] [--json FILE]
        [--only ours,ours-tls,nats,rabbitmq] [--runs 3]

Each system runs two nodes whose traffic crosses one link of our WAN emulator, at 0 ms and at
40 ms round trip, and is measured the same way (1 KiB messages, one client process):

- catch-up: N messages preloaded at the origin, then the time until the other node has them;
- end-to-end latency p50/p99 at 1 000 msg/s;
- acknowledged ingress from one client process, as fast as acknowledgements come back;
- for each phase, the CPU microseconds per message of every process involved (the servers,
  our applier, the client; the WAN emulator apart), read from /proc: a figure that a busy
  machine disturbs far less than a rate (`peers/cpu.py`).

With `--runs N` the systems are measured interleaved (ours, NATS, ours, NATS, ...) and a
summary gives, per system and RTT, the min / median / max of catch-up (and ours including
apply), ingress, latency, receiver CPU per MiB and CPU per message of each phase, and, per
run, the ratio of our catch-up to each peer's.

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
SYSTEMS = ("ours", "ours-tls", "nats", "rabbitmq")
DEBIAN_PACKAGES = {"nats": "nats-server", "rabbitmq": "rabbitmq-server"}
PYTHON_CLIENTS = {"nats": ("nats",), "rabbitmq": ("aio_pika", "pika")}
COLUMNS = (
    "system", "RTT", "catch-up msg/s", "catch-up MiB/s", "e2e p50/p99 ms", "ingress msg/s",
    "CPU us/msg ingress / catch-up / e2e", "receiver CPU ms/MiB", "durability",
)  # fmt: skip
PHASES = ("ingress", "catch_up", "e2e")

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
        "runs": args.runs,
        "results": [
            {"run": run, **_measure(name, rtt, args.messages)}
            for run in range(1, args.runs + 1)
            for name in chosen
            for rtt in RTTS_MS
        ],
    }
    report["summary"] = summary(report["results"])
    report["seconds"] = round(time.monotonic() - started)
    report["load_average_after"] = os.getloadavg()
    print(table(report["results"]))
    if args.runs > 1:
        print()
        print(summary_table(report["summary"]))
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
    parser.add_argument("--runs", type=int, default=1, help="interleaved runs of every system")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
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
    if name == "ours-tls":
        return lambda rtt_ms, messages: _ours(rtt_ms, messages, tls=True)
    from peers import nats, rabbitmq

    peer = {"nats": nats, "rabbitmq": rabbitmq}[name]
    return lambda rtt_ms, messages: peer.run(rtt_ms, messages, RATE, DURATION_S)


def _ours(rtt_ms: float, messages: int, tls: bool = False) -> dict[str, Any]:
    """benchmarks/replication.py with its link through the emulator (fsync on); with `tls`,
    the TLS row (mutual TLS 1.3 on the link and the client's connection)."""
    system = "multiactive+tls" if tls else "multiactive"

    def measure() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="multiactive-compare-") as tmp:
            result = replication.run(messages, RATE, DURATION_S, Path(tmp), True, rtt_ms, tls)
        return {"system": system, "version": __version__, **result}

    return guarded(system, rtt_ms, measure)


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
        error = "error " + mark(f"{system} at {rtt}: {result['error']}")
        return [system, rtt, error, *[""] * (len(COLUMNS) - 3)]
    return [
        system,
        rtt,
        f"{result['catch_up_msgs_per_s']:,}",
        f"{result['catch_up_mib_per_s']}",
        f"{result['latency_p50_ms']} / {result['latency_p99_ms']}",
        f"{result['ingress_msgs_per_s']:,}",
        _cpu(result),
        f"{result.get('catch_up_receiver_cpu_ms_per_mib', '-')}",
        mark(f"{result['system']}: {result['durability']}"),
    ]


def _cpu(result: dict[str, Any]) -> str:
    figures = result.get("cpu_us_per_msg", {})
    return " / ".join(f"{figures[p]['total']:g}" if p in figures else "-" for p in PHASES)


# -- summary over runs -------------------------------------------------------------------


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per system and RTT: min / median / max of the rates and CPU figures over the runs; per
    run and RTT: our catch-up over each peer's."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for result in results:
        if "error" not in result:
            groups.setdefault((result["system"], result["rtt_ms"]), []).append(result)
    figures = {
        "catch_up_msgs_per_s": lambda r: r["catch_up_msgs_per_s"],
        "catch_up_applied_msgs_per_s": lambda r: r["catch_up_applied_msgs_per_s"],
        "catch_up_receiver_cpu_ms_per_mib": lambda r: r["catch_up_receiver_cpu_ms_per_mib"],
        "ingress_msgs_per_s": lambda r: r["ingress_msgs_per_s"],
        "latency_p50_ms": lambda r: r["latency_p50_ms"],
        "latency_p99_ms": lambda r: r["latency_p99_ms"],
        **{
            f"cpu_us_per_msg_{phase}": (lambda r, p=phase: r["cpu_us_per_msg"][p]["total"])
            for phase in PHASES
        },
    }
    spread = {
        f"{system} @ {rtt:g} ms": {
            name: _spread([get(r) for r in runs if _has(get, r)]) for name, get in figures.items()
        }
        for (system, rtt), runs in groups.items()
    }
    ratios: list[dict[str, Any]] = []
    by_run = {(r["run"], r["system"], r["rtt_ms"]): r for g in groups.values() for r in g}
    for (run, system, rtt), ours in by_run.items():
        if system != "multiactive":
            continue
        for (other_run, peer, other_rtt), theirs in by_run.items():
            if (other_run, other_rtt) == (run, rtt) and not peer.startswith("multiactive"):
                ratio = ours["catch_up_msgs_per_s"] / theirs["catch_up_msgs_per_s"]
                ratios.append({"run": run, "rtt_ms": rtt, "peer": peer, "catch_up_ratio": ratio})
    return {"spread": spread, "catch_up_ratios": ratios, "tls_ratios": _tls_ratios(by_run)}


def _tls_ratios(by_run: dict[tuple[int, str, float], dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run and RTT: TLS over plaintext for catch-up and acknowledged ingress (target
    >= 0.8 for both)."""
    found = []
    for (run, system, rtt), tls in by_run.items():
        plain = by_run.get((run, "multiactive", rtt))
        if system != "multiactive+tls" or plain is None:
            continue
        found.append({"run": run, "rtt_ms": rtt, **{
            f"{figure}_ratio": round(tls[figure] / plain[figure], 3)
            for figure in ("catch_up_msgs_per_s", "ingress_msgs_per_s")
        }})  # fmt: skip
    return found


def _has(get: Callable[[dict[str, Any]], Any], result: dict[str, Any]) -> bool:
    try:
        return get(result) is not None
    except KeyError:
        return False


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    low, high = ordered[0], ordered[-1]
    return {
        "min": low,
        "median": median,
        "max": high,
        "max_over_min": round(high / low, 2) if low else 0.0,
    }


def summary_table(report: dict[str, Any]) -> str:
    lines = [
        "| system @ RTT | catch-up min / median / max msg/s | spread | catch-up incl. apply "
        "median msg/s | ingress median msg/s | CPU us/msg median ingress / catch-up / e2e |",
        "|---|---|---|---|---|---|",
    ]
    for group, figures in report["spread"].items():
        catch_up, ingress = figures["catch_up_msgs_per_s"], figures["ingress_msgs_per_s"]
        applied = figures["catch_up_applied_msgs_per_s"]
        applied_text = f"{applied['median']:,.0f}" if applied else "-"
        cpu = " / ".join(
            f"{figures[f'cpu_us_per_msg_{p}']['median']:g}"
            if figures[f"cpu_us_per_msg_{p}"]
            else "-"
            for p in PHASES
        )
        lines.append(
            f"| {group} | {catch_up['min']:,} / {catch_up['median']:,.0f} / {catch_up['max']:,} "
            f"| {catch_up['max_over_min']}x | {applied_text} | {ingress['median']:,.0f} | {cpu} |"
        )
    for ratio in report["catch_up_ratios"]:
        lines.append(
            f"\nrun {ratio['run']}, {ratio['rtt_ms']:g} ms: our catch-up / {ratio['peer']} = "
            f"{ratio['catch_up_ratio']:.2f}x"
        )
    return "\n".join(lines)


def _line(cells: Sequence[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


if __name__ == "__main__":
    sys.exit(main())
