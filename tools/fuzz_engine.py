"""``make fuzz-engine``: the differential property of tests/unit/test_engine_differential.py
(the engine against the reference evaluator written from docs/semantics.md) run for a
given time instead of a bounded number of examples, in rounds with fresh random seeds,
printing progress. Exits non-zero with the falsifying example on the first difference."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from shared.platform.entrypoint import cli_parser

ROOT = Path(__file__).resolve().parent.parent
ROUND_EXAMPLES = 2000


def say(text: str) -> None:
    print(text, flush=True)  # noqa: T201 (a command's output)


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(
        "tools.fuzz_engine",
        "The engine against its reference evaluator (written from docs/semantics.md) on"
        " random triggers and histories, in rounds of fresh random seeds, for a given"
        " time; exits 1 with the falsifying example on the first difference. Runs"
        " tests/unit/test_engine_differential.py: needs a source checkout.",
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    deadline = time.monotonic() + args.minutes * 60
    rounds = examples = 0
    started = time.monotonic()
    while time.monotonic() < deadline:
        rounds += 1
        env = {**os.environ, "ENGINE_FUZZ_EXAMPLES": str(ROUND_EXAMPLES)}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--hypothesis-seed",
                str(int.from_bytes(os.urandom(4), "big")),
                "tests/unit/test_engine_differential.py",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            say(proc.stdout[-20000:] + proc.stderr[-5000:])
            say(f"[fuzz-engine] DIFFERENCE in round {rounds} after {examples} examples")
            return 1
        examples += ROUND_EXAMPLES
        elapsed = time.monotonic() - started
        say(
            f"[fuzz-engine] round {rounds}: {examples} examples without a difference"
            f" ({elapsed / 60:.1f} of {args.minutes:g} min)"
        )
    say(f"[fuzz-engine] done: {examples} examples in {rounds} rounds, no difference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
