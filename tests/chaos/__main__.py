"""`python -m tests.chaos`: run the chaos driver (what `make chaos` runs).

Exit 0 when no invariant was violated, 1 at the first violation (seed, operation log and
the invariant are printed; `--seed` replays it), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
from pathlib import Path

import trio

from tests.chaos import plan
from tests.chaos.driver import Driver, Options, Result

LOG_TAIL = 60


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="replay this seed (default: random)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--duration", type=float, default=None, help="seconds, per engine")
    parser.add_argument("--engine", choices=["fake", "real", "both"], default="fake")
    parser.add_argument("--fault-rate", type=float, default=0.15)
    parser.add_argument(
        "--weights",
        default="",
        help="comma-separated KIND=WEIGHT overrides, e.g. service_kill=0.5,stall=4",
    )
    parser.add_argument("--max-ops", type=int, default=3, help="operations per step: 1..N")
    parser.add_argument("--bound", type=float, default=None, help="convergence bound, seconds")
    parser.add_argument("--only", default="", help="comma-separated kinds: only these")
    parser.add_argument("--disable", default="", help="comma-separated kinds to switch off")
    parser.add_argument("--enable", default="", help="kinds off by default to switch on")
    parser.add_argument(
        "--break",
        dest="break_invariant",
        default=None,
        choices=["duplicate_tty", "stray_dir"],
        help="break an invariant on purpose",
    )
    parser.add_argument(
        "--strict-heartbeats",
        action="store_true",
        help="no gap even before the dying heartbeat (a known finding: docs/chaos.md)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep service logs here")
    parser.add_argument("--list-kinds", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # trio delivers it to the run: the driver's teardown still runs


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # stop a long run with `kill PID`: no leftovers
    args = parse(argv)
    if args.list_kinds:
        for kind in [*plan.OPERATIONS, *plan.FAULTS]:
            off = " (off by default: finds a known defect)" if kind in plan.DEFAULT_DISABLED else ""
            print(f"{kind}{off}")
        return 0
    try:
        for item in _split(args.weights):
            kind, _, weight = item.partition("=")
            table = plan.OPERATIONS if kind in plan.OPERATIONS else plan.FAULTS
            if kind not in table:
                raise ValueError(f"unknown kind {kind!r}")
            table[kind] = float(weight)
    except ValueError as exc:
        print(f"chaos: --weights: {exc}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    print(f"chaos: seed {seed} (replay with SEED={seed})", flush=True)
    engines = ["fake", "real"] if args.engine == "both" else [args.engine]
    summaries = []
    failed = False
    for engine in engines:
        try:
            kinds = plan.enabled_kinds(
                engine,
                only=_split(args.only),
                disable=_split(args.disable),
                enable=_split(args.enable),
            )
        except ValueError as exc:
            print(f"chaos: {exc}", file=sys.stderr)
            return 2
        options = Options(
            seed=seed,
            engine=engine,
            steps=args.steps,
            duration=args.duration,
            kinds=kinds,
            fault_rate=args.fault_rate,
            max_ops=args.max_ops,
            bound=args.bound,
            break_invariant=args.break_invariant,
            strict_heartbeats=args.strict_heartbeats,
            verbose=args.verbose,
            log_dir=args.log_dir,
        )
        result = trio.run(Driver(options).run)
        summaries.append(result.summary())
        report(result)
        if result.violation:
            failed = True
            break
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summaries, indent=2) + "\n")
    return 1 if failed else 0


def report(result: Result) -> None:
    summary = result.summary()
    print(json.dumps({k: v for k, v in summary.items() if k != "violation"}, indent=1), flush=True)
    if result.violation is None:
        print(f"chaos: {result.engine} engine: no violation (seed {result.seed})", flush=True)
        return
    print(f"\nchaos: INVARIANT VIOLATED on the {result.engine} engine, seed {result.seed}")
    print(f"  {result.violation}")
    print(f"operation log (last {LOG_TAIL} of {len(result.log)}):")
    for line in result.log[-LOG_TAIL:]:
        print(f"  {line}")
    print(f"replay: make chaos SEED={result.seed} ENGINE=fake STEPS={result.steps}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
