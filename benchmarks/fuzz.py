"""Fuzz the wire protocol: N inputs through `multiactive.testing.fuzz.run_one`.

    python benchmarks/fuzz.py --inputs 1000000 --json fuzz.json

With atheris installed (`pip install -e '.[fuzz]'`) the inputs come from libFuzzer's
coverage-guided mutations of the corpus under tests/fuzz_corpus/ (engine "atheris"); without
it, from seeded random mutations of the same corpus (engine "random"). A crash is an
exception other than the allowed ones escaping `run_one`: each is counted and its input saved
under --crashes (add it to tests/fuzz_corpus/ once fixed, and CI replays it). Reports
`inputs`, `crashes` and `seconds` as a table and as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "tests" / "fuzz_corpus"


def _corpus() -> list[bytes]:
    from multiactive.testing.fuzz import seeds

    return [p.read_bytes() for p in sorted(CORPUS.iterdir()) if p.is_file()] + seeds()


class Counter:
    """Runs inputs, counts them and their crashes, and saves each crashing input."""

    def __init__(self, limit: int, crashes: Path, stats: Path | None) -> None:
        from multiactive.testing.fuzz import run_one

        self.run_one = run_one
        self.limit = limit
        self.inputs = 0
        self.crashes = 0
        self.crash_dir = crashes
        self.stats = stats
        self.started = time.perf_counter()

    def __call__(self, data: bytes) -> None:
        self.inputs += 1
        try:
            self.run_one(data)
        except Exception:
            self.crashes += 1
            self.crash_dir.mkdir(parents=True, exist_ok=True)
            name = hashlib.sha1(data).hexdigest()[:16]
            (self.crash_dir / f"crash-{name}").write_bytes(data)
            if self.crashes <= 5:
                traceback.print_exc()
        if self.inputs >= self.limit and self.stats is not None:
            self.write(self.stats)
            os._exit(0)  # libFuzzer would run on; the figures are written

    def write(self, path: Path) -> None:
        figures = {"inputs": self.inputs, "crashes": self.crashes,
                   "seconds": round(time.perf_counter() - self.started, 2)}  # fmt: skip
        path.write_text(json.dumps(figures))


def run_atheris(limit: int, crashes: Path, stats: Path) -> None:
    """In this (child) process: libFuzzer drives `Counter` until `limit` inputs."""
    import atheris  # type: ignore[import-not-found]

    with atheris.instrument_imports(include=["multiactive"]):  # coverage of our code only
        import multiactive.testing.fuzz  # noqa: F401

    counter = Counter(limit, crashes, stats)
    with tempfile.TemporaryDirectory() as work:
        for index, data in enumerate(_corpus()):
            (Path(work) / f"seed-{index}").write_bytes(data)
        atheris.Setup([sys.argv[0], f"-runs={limit + 1000}", "-max_len=4096", work], counter)
        atheris.Fuzz()


def run_random(limit: int, crashes: Path, seed: int) -> dict[str, float]:
    counter = Counter(limit, crashes, None)
    corpus, rng = _corpus(), random.Random(seed)
    while counter.inputs < limit:
        data = bytearray(rng.choice(corpus))
        for _ in range(rng.randint(1, 8)):
            where = rng.randrange(len(data) + 1)
            choice = rng.random()
            if choice < 0.5 and data:
                data[min(where, len(data) - 1)] = rng.randrange(256)
            elif choice < 0.8:
                data[where:where] = rng.randbytes(rng.randint(1, 8))
            else:
                del data[where : where + rng.randint(1, 16)]
        counter(bytes(data) if rng.random() < 0.9 else rng.randbytes(rng.randint(0, 256)))
    return {"inputs": counter.inputs, "crashes": counter.crashes,
            "seconds": round(time.perf_counter() - counter.started, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs to run")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--crashes", type=Path, default=Path("fuzz-crashes"),
                        help="folder for crashing inputs")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="seed of the random engine")
    parser.add_argument("--child-stats", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_stats is not None:
        run_atheris(args.inputs, args.crashes, args.child_stats)
        return
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # type: ignore[import-not-found]  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "random"
    if engine == "atheris":
        figures = _atheris_child(args)
    else:
        figures = run_random(args.inputs, args.crashes, args.seed)
    figures = {"engine": engine, **figures}
    print(f"{'engine':<10}{'inputs':>12}{'crashes':>10}{'seconds':>10}{'inputs/s':>12}")
    rate = figures["inputs"] / max(figures["seconds"], 1e-9)
    print(f"{engine:<10}{figures['inputs']:>12,}{figures['crashes']:>10}"
          f"{figures['seconds']:>10.1f}{rate:>12,.0f}")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    sys.exit(1 if figures["crashes"] else 0)


def _atheris_child(args: argparse.Namespace) -> dict[str, float]:
    """libFuzzer ends its process by itself: run it in a child and read what it wrote."""
    with tempfile.TemporaryDirectory() as work:
        stats = Path(work) / "stats.json"
        command = [sys.executable, __file__, "--inputs", str(args.inputs),
                   "--crashes", str(args.crashes), "--child-stats", str(stats)]  # fmt: skip
        done = subprocess.run(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
        )
        if not stats.exists():
            sys.stderr.write(done.stderr.decode(errors="replace")[-4000:])
            raise SystemExit(
                f"atheris stopped before {args.inputs} inputs (exit {done.returncode})"
            )
        figures: dict[str, float] = json.loads(stats.read_text())
        return figures


if __name__ == "__main__":
    main()
