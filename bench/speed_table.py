"""The speed issue's table in one command: data-science runs with and without the
zygote, the second install of a package against the first, and the SDK floor.

    uv run --frozen python bench/speed_table.py [--runs N] [--pace SECONDS] [--package pandas]

Needs the data-stack image for the runs (DOCKER_IMAGE, default omcp-py-sandbox:test:
`omcp_py image build --tag omcp-py-sandbox:test`), python:3.11-slim for the installs
(the data image has pandas already), and the index (PACKAGE_CA_BUNDLE behind a
TLS-intercepting proxy). In one run, on one engine: the bare MCP SDK server's trivial
call (the floor), each snippet of bench/preload.py stateless and stateful, paced and
back to back, with SANDBOX_PRELOAD=none (the baseline) and with the data stack; the
idle memory of a sandbox of each; then PACKAGE into a new sandbox with an empty cache
and into the next sandbox (from the cache). Figures, not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import statistics
import uuid

import anyio
import docker
from install_cache import index_settings, install_once
from preload import PRELOAD, comparison_rows, measure, print_table

from bench import mcp_floor, omcp


async def installs(package: str, runs: int) -> tuple[float, float]:
    volume = f"omcp-bench-cache-{uuid.uuid4().hex[:8]}"
    env = {**index_settings(), "DOCKER_IMAGE": "python:3.11-slim", "SANDBOX_POOL_SIZE": "0"}
    try:
        async with omcp({**env, "PACKAGE_CACHE_VOLUME": volume}) as client:
            first = await install_once(client, package)
            later = [await install_once(client, package) for _ in range(runs)]
    finally:
        docker.from_env().volumes.get(volume).remove(force=True)
    return first, statistics.median(later)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pace", type=float, default=1.0)
    parser.add_argument("--package", default="pandas")
    args = parser.parse_args()
    floor = await mcp_floor(args.runs)
    base = await measure({"SANDBOX_PRELOAD": "none"}, args.runs, args.pace)
    pre = await measure({"SANDBOX_PRELOAD": PRELOAD}, args.runs, args.pace)
    first, later = await installs(args.package, max(1, args.runs // 2))

    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    rows = [("row", "baseline", "omcp_py", "ratio", "target")]
    rows.append(
        (
            "MCP SDK floor: trivial call, paced / b2b p50",
            f"{ms(statistics.median(floor['paced']))} / {ms(statistics.median(floor['b2b']))}",
            "",
            "",
            "(reference)",
        )
    )
    rows.append(("MCP SDK floor: 100 calls at once", f"{floor['throughput']:.0f}/s", "", "", ""))
    rows += [(f"{row} (no preload -> preload)", *rest) for row, *rest in comparison_rows(base, pre)]
    rows.append(
        (
            f"install {args.package} into a new sandbox (first -> next, from the cache)",
            f"{first:.2f} s",
            f"{later:.2f} s",
            f"{later / first:.2f}x",
            "<= 0.25x",
        )
    )
    print(f"\nmedian of {args.runs} runs after the first; paced = {args.pace} s apart")
    print_table(rows)


if __name__ == "__main__":
    anyio.run(main)
