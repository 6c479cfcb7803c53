"""How fast omcp_py is, beside the plain docker SDK doing the same work, in one run.

    uv run --frozen python bench/bench.py [--quick]

Everything of omcp_py is measured through the MCP stdio client, as an assistant
would see it; the baseline is `containers.run` + `exec_run` on the same engine and
image, measured in the same run. Prints one table with the ratios and the targets
of the speed issue. Figures, not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import docker
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

IMAGE = os.environ.get("DOCKER_IMAGE", "python:3.11-slim")
HERE = Path(__file__).resolve().parent
BENCH_LABEL = {"omcp-bench": "baseline"}
CPU_LOOP = "import time\nwhile time.process_time() < 1.0:\n    pass\n"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.2f} s"


class Client:
    def __init__(self, session: ClientSession) -> None:
        self.session = session

    async def call(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        result = await self.session.call_tool(name, args)
        if result.is_error:
            raise RuntimeError(f"{name}: {result.content[0].text}")
        if result.structured_content is not None:
            return result.structured_content
        # A run or a download: a JSON summary, then its output blocks (label line first).
        texts = [block.text for block in result.content if block.type == "text"]
        fields = json.loads(texts[0])
        for text in texts[1:]:
            label, _, body = text.partition("\n")
            fields[{"stdout:": "output", "stderr:": "error"}.get(label, "text")] = body
        return fields

    async def create(self, **args: Any) -> str:
        return (await self.call("create_sandbox", args))["sandbox_id"]

    async def run(self, sandbox_id: str, code: str, timeout: int = 60) -> dict[str, Any]:
        result = await self.call(
            "execute_python_code", {"sandbox_id": sandbox_id, "code": code, "timeout": timeout}
        )
        if not result.get("success"):
            raise RuntimeError(f"execution failed: {result}")
        return result

    async def remove(self, sandbox_id: str) -> None:
        await self.call("remove_sandbox", {"sandbox_id": sandbox_id, "force": True})


@asynccontextmanager
async def omcp(env: dict[str, str]) -> AsyncIterator[Client]:
    full = {"LOG_LEVEL": "WARNING", "MAX_SANDBOXES": "20", **env}
    if "DOCKER_HOST" in os.environ:
        full["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    params = StdioServerParameters(command=sys.executable, args=["-m", "omcp_py"], env=full)
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, read_timeout_seconds=600) as session,
    ):
        await session.initialize()
        yield Client(session)


async def launch_to_initialize(args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        params = StdioServerParameters(
            command=sys.executable, args=args, env={"LOG_LEVEL": "WARNING"}
        )
        started = time.perf_counter()
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            times.append(time.perf_counter() - started)
    return times


async def timed(fn: Any, *args: Any) -> float:
    started = time.perf_counter()
    await fn(*args)
    return time.perf_counter() - started


# -- omcp_py ---------------------------------------------------------------------------


async def mcp_floor(runs: int) -> dict[str, Any]:
    """What the MCP SDK itself costs here: a bare MCPServer's one trivial tool."""
    params = StdioServerParameters(command=sys.executable, args=[str(HERE / "bare_server.py")])
    out: dict[str, Any] = {"paced": [], "b2b": []}
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()

        async def echo() -> None:
            await session.call_tool("echo", {"text": "1"})

        for _ in range(runs * 5):
            await anyio.sleep(0.01)
            out["paced"].append(await timed(echo))
        for _ in range(runs * 5):
            out["b2b"].append(await timed(echo))
        best = 0.0
        for _ in range(3):
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(echo)
            best = max(best, 100 / (time.perf_counter() - started))
        out["throughput"] = best
    return out


async def ours(runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Alternated, one of each at a time: a drift of the machine hits both alike.
    out["launch"], out["launch_bare"] = [], []
    for _ in range(runs):
        out["launch"] += await launch_to_initialize(["-m", "omcp_py"], 1)
        out["launch_bare"] += await launch_to_initialize([str(HERE / "bare_server.py")], 1)
    out["floor"] = await mcp_floor(runs)

    async with omcp({"SANDBOX_POOL_SIZE": "2"}) as client:
        await anyio.sleep(3)  # let the pool fill
        creates, firsts = [], []
        for _ in range(runs):
            started = time.perf_counter()
            sid = await client.create()
            creates.append(time.perf_counter() - started)
            await client.run(sid, "print(1)")
            firsts.append(time.perf_counter() - started)
            await client.remove(sid)
            await anyio.sleep(0.6)  # the pool refills: measure it warm
        out["create_pool"], out["first_pool"] = creates, firsts

        for mode, stateful in (("stateless", False), ("stateful", True)):
            sid = await client.create(stateful=stateful)
            await client.run(sid, "print(1)")
            paced, back = [], []
            for _ in range(runs * 5):
                await anyio.sleep(0.01)  # an assistant never calls back to back
                paced.append(await timed(client.run, sid, "print(1)"))
            for _ in range(runs * 5):
                back.append(await timed(client.run, sid, "print(1)"))
            out[f"exec_{mode}"], out[f"exec_{mode}_b2b"] = paced, back
            await client.remove(sid)

        sids = [await client.create() for _ in range(4)]
        best = 0.0
        for _ in range(3):
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(client.run, sids[i % 4], "print(1)")
            best = max(best, 100 / (time.perf_counter() - started))
        out["throughput"] = best
        for sid in sids:
            await client.remove(sid)

    async with omcp({"SANDBOX_POOL_SIZE": "0"}) as client:
        creates, firsts, bare = [], [], []
        for _ in range(runs):
            started = time.perf_counter()
            sid = await client.create()
            creates.append(time.perf_counter() - started)
            await client.run(sid, "print(1)")
            firsts.append(time.perf_counter() - started)
            await client.remove(sid)
            # The bare containers.run right after, on the engine in the same state: the
            # ratio then does not depend on what the engine did minutes earlier.
            bare.append(await anyio.to_thread.run_sync(bare_create))
        out["create_cold"], out["first_cold"], out["create_cold_bare"] = creates, firsts, bare

        sids = [await client.create() for _ in range(10)]
        walls: list[float] = []

        async def loop(sid: str) -> None:
            walls.append(await timed(client.run, sid, CPU_LOOP))

        async with anyio.create_task_group() as tg:
            for sid in sids:
                tg.start_soon(loop, sid)
        out["cpu_walls"] = walls
        await anyio.sleep(2)
        out["memory"] = await anyio.to_thread.run_sync(idle_memory, "omcp_py.role", "sandbox")
        for sid in sids:
            await client.remove(sid)
    return out


# -- the plain docker SDK --------------------------------------------------------------


def bare_run(client: Any) -> Any:
    """The baseline's container: `containers.run(network_disabled=True)`, limits set."""
    return client.containers.run(
        IMAGE,
        ["sleep", "infinity"],
        detach=True,
        network_disabled=True,
        labels=BENCH_LABEL,
        nano_cpus=int(float(os.environ.get("SANDBOX_CPUS", "0.5")) * 1e9),
        mem_limit="512m",
    )


def bare_create() -> float:
    client = docker.from_env(version="auto")
    started = time.perf_counter()
    container = bare_run(client)
    elapsed = time.perf_counter() - started
    container.remove(force=True)
    return elapsed


def baseline(runs: int) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    client = docker.from_env(version="auto")
    out: dict[str, Any] = {}

    def run_one() -> Any:
        return bare_run(client)

    def exec_one(container: Any, code: str = "print(1)") -> None:
        result = container.exec_run(["python3", "-c", code])
        assert result.exit_code == 0, result

    try:
        creates, firsts = [], []
        for _ in range(runs):
            started = time.perf_counter()
            container = run_one()
            creates.append(time.perf_counter() - started)
            exec_one(container)
            firsts.append(time.perf_counter() - started)
            container.remove(force=True)
        out["create"], out["first"] = creates, firsts

        container = run_one()
        exec_one(container)
        execs = []
        for _ in range(runs * 2):
            started = time.perf_counter()
            exec_one(container)
            execs.append(time.perf_counter() - started)
        out["exec"] = execs
        container.remove(force=True)

        containers = [run_one() for _ in range(4)]
        best = 0.0
        with ThreadPoolExecutor(16) as pool:
            for _ in range(3):
                started = time.perf_counter()
                list(pool.map(lambda i: exec_one(containers[i % 4]), range(100)))
                best = max(best, 100 / (time.perf_counter() - started))
        out["throughput"] = best
        for container in containers:
            container.remove(force=True)

        containers = [run_one() for _ in range(10)]

        def loop(container: Any) -> float:
            started = time.perf_counter()
            exec_one(container, CPU_LOOP)
            return time.perf_counter() - started

        with ThreadPoolExecutor(10) as pool:
            out["cpu_walls"] = list(pool.map(loop, containers))
        time.sleep(2)
        out["memory"] = idle_memory("omcp-bench", "baseline")
        for container in containers:
            container.remove(force=True)
    finally:
        for container in client.containers.list(all=True, filters={"label": "omcp-bench"}):
            container.remove(force=True)
    return out


def idle_memory(label: str, value: str) -> float:
    """Mean host memory of one idle container: its cgroup plus its containerd shim."""
    client = docker.from_env(version="auto")
    containers = client.containers.list(filters={"label": f"{label}={value}"})
    shims = _shim_rss()
    totals = []
    for container in containers:
        stats = container.stats(stream=False)["memory_stats"]
        usage = stats.get("usage", 0) - stats.get("stats", {}).get("total_inactive_file", 0)
        totals.append(usage + shims.get(container.id, 0))
    return statistics.mean(totals) if totals else float("nan")


def _shim_rss() -> dict[str, int]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if not cmdline or b"containerd-shim" not in cmdline[0]:
                continue
            status = (entry / "status").read_text()
        except OSError:
            continue
        rss = next(int(line.split()[1]) * 1024 for line in status.splitlines() if "VmRSS" in line)
        if b"-id" in cmdline:
            found[cmdline[cmdline.index(b"-id") + 1].decode()] = rss
    return found


# -- the table ---------------------------------------------------------------------------


def report(o: dict[str, Any], b: dict[str, Any]) -> None:
    rows = []

    def row(name: str, ours_: str, base: str, ratio: str, target: str) -> None:
        rows.append((name, ours_, base, ratio, target))

    def p(values: list[float]) -> str:
        return f"{ms(pct(values, 50))} / {ms(pct(values, 90))}"

    launch = pct(o["launch"], 50) / pct(o["launch_bare"], 50)
    row(
        "launch -> initialize p50",
        ms(pct(o["launch"], 50)),
        f"bare MCPServer {ms(pct(o['launch_bare'], 50))}",
        f"{launch:.2f}x",
        "<= 1.10x",
    )
    base_create = pct(b["create"], 50)
    row(
        "create_sandbox, pool warm p50/p90",
        p(o["create_pool"]),
        p(b["create"]),
        f"{pct(o['create_pool'], 50) / base_create:.2f}x",
        "<= 10 ms",
    )
    row(
        "create_sandbox, pool 0 p50/p90 (each beside a bare run)",
        p(o["create_cold"]),
        p(o["create_cold_bare"]),
        f"{pct(o['create_cold'], 50) / pct(o['create_cold_bare'], 50):.2f}x",
        "<= 1.2x",
    )
    floor = o["floor"]
    row(
        "MCP SDK floor: bare MCPServer, trivial tool, paced / back to back p50",
        f"{ms(pct(floor['paced'], 50))} / {ms(pct(floor['b2b'], 50))}",
        "",
        "",
        "(reference)",
    )
    row(
        "MCP SDK floor: 100 trivial calls at once",
        f"{floor['throughput']:.0f}/s",
        "",
        "",
        "(reference)",
    )
    base_exec = pct(b["exec"], 50)
    for mode, target in (("stateless", "<= 5 ms"), ("stateful", "<= 3 ms")):
        for suffix, how in (("", "paced 10 ms"), ("_b2b", "back to back")):
            values = o[f"exec_{mode}{suffix}"]
            row(
                f"execute print(1), {mode}, {how} p50/p90",
                p(values),
                f"exec_run {p(b['exec'])}",
                f"{base_exec / pct(values, 50):.1f}x faster",
                target if not suffix else "",
            )
        # What omcp_py adds to the SDK's own cost: the part the targets can move.
        above = [
            pct(o[f"exec_{mode}{suffix}"], 50) - pct(floor[kind], 50)
            for suffix, kind in (("", "paced"), ("_b2b", "b2b"))
        ]
        row(
            f"  {mode}: above the SDK floor, paced / back to back p50",
            f"{ms(above[0])} / {ms(above[1])}",
            "",
            "",
            "",
        )
    for key, pool in (("first_pool", "warm"), ("first_cold", "0")):
        row(
            f"new sandbox -> first result, pool {pool} p50",
            ms(pct(o[key], 50)),
            ms(pct(b["first"], 50)),
            f"{pct(b['first'], 50) / pct(o[key], 50):.1f}x faster",
            "",
        )
    row(
        "throughput, 100 runs over 4 sandboxes",
        f"{o['throughput']:.0f}/s",
        f"{b['throughput']:.0f}/s",
        f"{o['throughput'] / b['throughput']:.1f}x",
        ">= 500/s",
    )
    cpus = float(os.environ.get("SANDBOX_CPUS", "0.5"))
    ideal = max(1.0 / cpus, 10 * 1.0 / (os.cpu_count() or 1))
    row(
        f"10 x 1 s CPU loops, wall / ideal ({ideal:.1f} s) p50/p90",
        f"{pct(o['cpu_walls'], 50) / ideal:.2f} / {pct(o['cpu_walls'], 90) / ideal:.2f}",
        f"{pct(b['cpu_walls'], 50) / ideal:.2f} / {pct(b['cpu_walls'], 90) / ideal:.2f}",
        "",
        "<= 1.15 at p90",
    )
    row(
        "host memory per idle sandbox",
        f"{o['memory'] / 2**20:.1f} MiB",
        f"{b['memory'] / 2**20:.1f} MiB",
        f"{o['memory'] / b['memory']:.2f}x",
        "",
    )
    header = ("metric", "omcp_py (MCP stdio)", "docker SDK", "ratio", "target")
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(5)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    runs = 5 if args.quick else 20
    print(f"omcp_py benchmark: image {IMAGE}, {os.cpu_count()} CPUs, {runs} runs per figure")
    print(f"run {uuid.uuid4().hex[:8]}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n", flush=True)
    b = await anyio.to_thread.run_sync(baseline, runs)
    o = await ours(runs)
    report(o, b)
    print("\nPeers (e.g. llm-sandbox) are not installed here; see bench/README.md.")


if __name__ == "__main__":
    anyio.run(main)
