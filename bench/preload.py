"""What SANDBOX_PRELOAD's zygote buys and costs, through the MCP stdio client.

    uv run --frozen python bench/preload.py [--runs N] [--pace SECONDS]

Needs an image with the data stack (DOCKER_IMAGE, default omcp-py-sandbox:test: build
it with `omcp_py image build --tag omcp-py-sandbox:test`). In one run, on one engine,
two servers: one without preload (the baseline) and one with
SANDBOX_PRELOAD=numpy,pandas,matplotlib.pyplot. For each snippet, stateless and
stateful: the median of N runs after the first, paced (runs SECONDS apart, as an
assistant calls) and back to back; then the host memory of an idle sandbox of each.
Ratios are preload / baseline. Figures, not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import anyio

from bench import idle_memory, omcp

IMAGE = os.environ.get("DOCKER_IMAGE", "omcp-py-sandbox:test")
PRELOAD = "numpy,pandas,matplotlib.pyplot"
SNIPPETS = {
    "print(1)": "print(1)",
    "import numpy + a sum": "import numpy as np\nprint(np.arange(10).sum())",
    "import pandas + a tiny DataFrame": (
        "import pandas as pd\nprint(pd.DataFrame({'a': [1, 2]}).shape)"
    ),
    "plt.plot + plt.show (one PNG)": (
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"
    ),
}
TARGETS = {
    "import pandas + a tiny DataFrame": 0.050,
    "plt.plot + plt.show (one PNG)": 0.200,
}


async def measure(env: dict[str, str], runs: int, pace: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with omcp({"DOCKER_IMAGE": IMAGE, "SANDBOX_POOL_SIZE": "0", **env}) as client:
        stateless = await client.create()
        stateful = await client.create(stateful=True)
        await anyio.sleep(15)  # the zygote's imports, once, off every figure below
        for name, code in SNIPPETS.items():
            for kind, sid in (("stateless", stateless), ("stateful", stateful)):
                for mode, gap in (("paced", pace), ("b2b", 0.0)):
                    await client.run(sid, code)  # the first: imports in a stateful one
                    times = []
                    for _ in range(runs):
                        await anyio.sleep(gap)
                        started = time.perf_counter()
                        await client.run(sid, code)
                        times.append(time.perf_counter() - started)
                    out[(name, kind, mode)] = statistics.median(times)
        await client.remove(stateful)
        await anyio.sleep(pace)
        label = "omcp_py.sandbox-id"
        out["idle"] = await anyio.to_thread.run_sync(idle_memory, label, stateless)
    return out


def comparison_rows(base: dict[str, Any], pre: dict[str, Any]) -> list[tuple[str, ...]]:
    """(row, without preload, with it, ratio, target) for each snippet, kind and mode,
    then the idle memory of each."""
    rows = []
    for name in SNIPPETS:
        for kind in ("stateless", "stateful"):
            for mode in ("paced", "b2b"):
                a, b = base[(name, kind, mode)], pre[(name, kind, mode)]
                target = TARGETS.get(name) if kind == "stateless" and mode == "paced" else None
                rows.append(
                    (
                        f"{name}, {kind}, {mode}",
                        f"{a * 1000:.1f} ms",
                        f"{b * 1000:.1f} ms",
                        f"{b / a:.2f}x",
                        f"<= {target * 1000:.0f} ms" if target else "",
                    )
                )
    mib = 1024 * 1024
    rows.append(
        (
            "idle sandbox, host memory",
            f"{base['idle'] / mib:.1f} MiB",
            f"{pre['idle'] / mib:.1f} MiB",
            f"{pre['idle'] / base['idle']:.2f}x",
            "",
        )
    )
    return rows


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def report(base: dict[str, Any], pre: dict[str, Any], runs: int, pace: float) -> None:
    print(f"\nimage {IMAGE}; median of {runs} runs after the first; paced = {pace} s apart")
    header = ("run", "no preload", "preload", "ratio", "target")
    print_table([header, *comparison_rows(base, pre)])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pace", type=float, default=1.0)
    args = parser.parse_args()
    base = await measure({"SANDBOX_PRELOAD": "none"}, args.runs, args.pace)
    pre = await measure({"SANDBOX_PRELOAD": PRELOAD}, args.runs, args.pace)
    report(base, pre, args.runs, args.pace)


if __name__ == "__main__":
    anyio.run(main)
