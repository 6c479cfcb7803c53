"""Run the adversarial suite (tests/security) and print one line per class of attack.

    uv run --frozen python bench/security_report.py [--runtime runsc] [pytest args...]

For each class (time, resources, output, escape, arguments, lifecycle under load):
how many cases ran and passed, the worst time to recover (from the attack's result to
a clean sandbox answering again, for the cases that measure it), the slowest case, and
the peak memory of the servers the cases started. The figures come from the suite
itself (tests/conftest.py writes a record per case when OMCP_SECURITY_RECORD is set);
this script asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", help="SANDBOX_RUNTIME for the sandboxes (e.g. runsc)")
    args, pytest_args = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "records.jsonl"
        env = dict(os.environ, OMCP_SECURITY_RECORD=str(records))
        if args.runtime:
            env["SANDBOX_RUNTIME"] = args.runtime
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        completed = subprocess.run(
            [*command, "tests/security", *pytest_args], cwd=ROOT, env=env, check=False
        )
        entries = (
            [json.loads(line) for line in records.read_text().splitlines()]
            if (records.exists())
            else []
        )
    by_class: dict[str, list[dict]] = defaultdict(list)
    for entry in entries:
        by_class[entry["class"]].append(entry)
    runtime = args.runtime or "the engine's default runtime"
    print(f"\nadversarial suite, sandboxes under {runtime}\n")
    header = ("class", "cases", "passed", "worst recovery", "slowest case", "peak server memory")
    rows = []
    for name in sorted(by_class):
        cases = by_class[name]
        recoveries = [c["recovery_s"] for c in cases if c["recovery_s"] is not None]
        durations = [c["duration_s"] for c in cases if c["duration_s"] is not None]
        peaks = [c["server_peak_mb"] for c in cases if c["server_peak_mb"] is not None]
        rows.append(
            (
                name,
                str(len(cases)),
                str(sum(c["passed"] for c in cases)),
                f"{max(recoveries):.2f} s" if recoveries else "-",
                f"{max(durations):.1f} s" if durations else "-",
                f"{max(peaks):.0f} MiB" if peaks else "-",
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return completed.returncode


if __name__ == "__main__":
    sys.exit(main())
