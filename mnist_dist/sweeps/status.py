"""``mnist-dist status DIR``: each trial's state in a sweep folder, and the counts.

    mnist-dist status runs/sweeps/seed_sweep [--json] [--check]

The states are ``state.trial_states``'s; a tune folder gets ``tune DIR --status``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from ..errors import ArgumentParser, UserError, cli_errors
from ..rundir import COLLAPSED_BELOW
from .state import RECORD, STATES, counts_line, load_record, trial_states


@cli_errors
def status_main(argv: list[str] | None = None, prog: str = "mnist-dist status") -> None:
    """mnist-dist status /tmp/s --json"""
    p = ArgumentParser(prog=prog, description="State of each trial in a sweep folder, and counts.")
    p.add_argument("dir", help="sweep folder (holds sweep.json)")
    p.add_argument("--json", action="store_true", help="print JSON: counts and trials")
    p.add_argument(
        "--check", action="store_true", help="exit 0 only when every trial is done, else 1"
    )
    args = p.parse_args(argv)
    out = Path(args.dir)
    if (out / "tune.json").is_file():  # a search's folder: `tune DIR --status`
        from ..tune.command import print_status

        if not print_status(out, args.json) and args.check:
            sys.exit(1)
        return
    record = load_record(out)
    if record is None:
        raise UserError(f"{out} is not a sweep folder (no {RECORD}); run `mnist-dist sweep` first")
    rows = trial_states(out, record)
    counts = Counter(r["state"] for r in rows)
    if args.json:
        summary = dict(name=record["name"], dir=str(out), total=len(rows))
        print(
            json.dumps(dict(summary, counts={s: counts[s] for s in STATES}, trials=rows), indent=2)
        )
    else:
        print(f"sweep {record['name']} in {out}")
        for r in rows:
            acc = f"{r['final_test_acc']:.2f}%" if r["final_test_acc"] is not None else ""
            acc += f" (collapsed: below {COLLAPSED_BELOW:g}%)" if r.get("collapsed") else ""
            detail = acc or r["error"] or ""
            print(
                f"  {r['trial_id']:<28} {r['state']:<8} {r['job_id'] or '-':<12} {detail}".rstrip()
            )
        print(counts_line(rows))
    if args.check and counts["done"] != len(rows):
        print(f"mnist-dist: check failed: {counts_line(rows)}", file=sys.stderr)
        sys.exit(1)
