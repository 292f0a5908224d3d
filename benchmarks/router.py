"""The live router beside nginx, proxying the same upstream in the same run.

    .venv/bin/python benchmarks/router.py [--requests 3000] [--concurrency 32] [--json FILE]

One upstream (a real nginx answering `200 ok` on every path, so the upstream costs little),
and in front of it, one at a time:

- `direct`: no proxy (the baseline);
- `nginx`: a real nginx running the exported include (`route export nginx`) for a one-site
  policy: geo, maps, split_clients, upstream keepalive;
- `router`: `multiactive router run` (a separate process) with the same policy.

For each: latency of sequential requests (one at a time, keep-alive; p50/p99), the latency the
proxy adds over `direct` (p50/p99 differences), and requests/s with `--concurrency` requests in
flight; for the router also its CPU time per request (user + system, from /proc: the figure
that moves least with the machine's load). The load comes from this process (aiohttp), so
requests/s is capped by the client on a small machine; added latency is the figure to
compare. Prints a table and JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from multiactive.local.edge import NginxServer
from multiactive.model.topology import Address, load_topology
from multiactive.procs import die_with_parent, free_port
from multiactive.routing.config import routing_config
from multiactive.routing.export import nginx_config
from multiactive.routing.policy import Policy

UPSTREAM = """server {{
    listen {address};
    access_log off;
    location / {{ return 200 "ok\\n"; }}
}}
"""


def topology(root: Path, upstream: Address) -> Path:
    path = root / "topology.toml"
    path.write_text(f"""[[sites]]
name = "a"
listen = "127.0.0.1:{free_port()}"

[routing]
[routing.upstreams]
a = ["{upstream}"]
[[routing.regions]]
name = "all"
cidrs = ["127.0.0.0/8"]
weights = {{ a = 100 }}
""")
    return path


async def measure(address: Address, requests: int, concurrency: int) -> dict[str, float]:
    url = f"http://{address}/bench"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        for _ in range(200):  # warm up connections and caches
            async with s.get(url, headers={"X-User-Id": "warm"}) as r:
                await r.read()
        latencies = []
        for n in range(requests):
            start = time.perf_counter()
            async with s.get(url, headers={"X-User-Id": f"user-{n}"}) as r:
                await r.read()
                assert r.status == 200, r.status
            latencies.append((time.perf_counter() - start) * 1000)
        latencies.sort()
        per_worker = requests * 3 // concurrency

        async def worker(w: int) -> None:
            for n in range(per_worker):
                async with s.get(url, headers={"X-User-Id": f"u{w}-{n}"}) as r:
                    await r.read()

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        seconds = time.perf_counter() - start
    return {
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        "requests_per_s": per_worker * concurrency / seconds,
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(address: Address, process: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the router exited with {process.returncode}")
        try:
            with socket.create_connection((address.host, address.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"the router does not listen on {address}")


def run(requests: int, concurrency: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-router-") as folder:
        root = Path(folder)
        upstream = Address("127.0.0.1", free_port())
        with NginxServer(root / "upstream", UPSTREAM.format(address=upstream), upstream):
            path = topology(root, upstream)
            policy = Policy(routing_config(load_topology(path)))
            results["direct"] = asyncio.run(measure(upstream, requests, concurrency))
            edge = Address("127.0.0.1", free_port())
            with NginxServer(root / "edge", nginx_config(policy, edge).text, edge):
                results["nginx"] = asyncio.run(measure(edge, requests, concurrency))
            listen = Address("127.0.0.1", free_port())
            command = [
                sys.executable, "-m", "multiactive", "router", "run", "--topology", str(path),
                "--site", "a", "--listen", str(listen), "--log-level", "WARNING",
            ]  # fmt: skip
            router = subprocess.Popen(command, preexec_fn=die_with_parent)
            try:
                wait_listening(listen, router)
                cpu_before = cpu_seconds(router.pid)
                results["router"] = asyncio.run(measure(listen, requests, concurrency))
                served = 200 + requests + requests * 3 // concurrency * concurrency
                results["router"]["cpu_us_per_request"] = (
                    (cpu_seconds(router.pid) - cpu_before) / served * 1e6
                )
            finally:
                router.terminate()
                router.wait(10)
    base = results["direct"]
    for name in ("nginx", "router"):
        results[name]["added_p50_ms"] = results[name]["p50_ms"] - base["p50_ms"]
        results[name]["added_p99_ms"] = results[name]["p99_ms"] - base["p99_ms"]
    return {
        "benchmark": "router",
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "requests": requests,
        "concurrency": concurrency,
        "results": results,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{'path':8} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10} {'req/s':>9}"
        f" {'CPU us/req':>11}"
    ]
    for name, r in result["results"].items():
        cpu = f"{r['cpu_us_per_request']:11.1f}" if "cpu_us_per_request" in r else f"{'':11}"
        lines.append(
            f"{name:8} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r.get('added_p50_ms', 0):10.3f} "
            f"{r.get('added_p99_ms', 0):10.3f} {r['requests_per_s']:9.0f} {cpu}"
        )
    lines.append(f"load average {result['load_average']:.2f} on {result['cpus']} CPUs")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="sequential requests per path")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight for req/s")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    result = run(args.requests, args.concurrency)
    print(table(result))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
