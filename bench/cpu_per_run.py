"""Where the CPU of a burst of runs goes: the profile behind the throughput figure.

    uv run --frozen python bench/cpu_per_run.py [--runs 100] [--bursts 3]

bench.py's throughput row (100 `print(1)` runs over 4 sandboxes at once, through one
MCP stdio connection) is bounded by the host's CPUs. This measures, in one run on one
engine, the CPU time each part of the machine spends per run during such bursts —
the client (this process), the server process, dockerd, containerd and its shims,
and the sandboxes' own cgroups (PID 1, the forked child, the next spare), for
stateless sandboxes (a fresh process per run) and stateful ones (one interpreter) —
beside the same for the floor: the bare MCP SDK server (bench/bare_server.py) answering
trivial calls. Linux with cgroup v1 or v2 and a local engine. Figures, not tests:
nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import docker
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from bench import HERE, omcp

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float:
    """Seconds of CPU a process and its reaped children used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / TICK


def _pids(word: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if word in (entry / "cmdline").read_bytes().split(b"\0")[0]:
                    found.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return found


def _server_pid(marker: bytes) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise LookupError("server process not found")


def _cgroup_cpu(container_ids: list[str]) -> float:
    total = 0.0
    for cid in container_ids:
        for path in (
            f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage",
            f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat",
        ):
            try:
                text = Path(path).read_text()
            except OSError:
                continue
            if path.endswith("cpuacct.usage"):
                total += int(text) / 1e9
            else:
                total += int(text.split()[1]) / 1e6  # usage_usec
            break
    return total


def sample(server: int, containers: list[str]) -> dict[str, float]:
    return {
        "client (this process)": _cpu_of(os.getpid()),
        "server process": _cpu_of(server),
        "dockerd": sum(_cpu_of(p) for p in _pids(b"dockerd")),
        "containerd + shims": sum(_cpu_of(p) for p in _pids(b"containerd")),
        "sandboxes (their cgroups)": _cgroup_cpu(containers),
    }


async def burst(call: Any, runs: int) -> float:
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(runs):
            tg.start_soon(call, i)
    return time.perf_counter() - started


def show(title: str, before: dict, after: dict, wall: float, runs: int) -> None:
    print(f"\n{title}: {runs / wall:.0f}/s")
    total = 0.0
    for key in before:
        spent = (after[key] - before[key]) / runs * 1000
        total += spent
        print(f"  {key:28s} {spent:6.2f} ms CPU per run")
    print(
        f"  {'all of them':28s} {total:6.2f} ms CPU per run  "
        f"(x {runs / wall:.0f}/s = {total * runs / wall / 1000:.2f} CPUs of {os.cpu_count()})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--bursts", type=int, default=3)
    args = parser.parse_args()
    n = args.runs * args.bursts

    marker = str(HERE / "bare_server.py").encode()
    params = StdioServerParameters(command=sys.executable, args=[str(HERE / "bare_server.py")])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        pid = _server_pid(marker)
        before, wall = sample(pid, []), 0.0
        for _ in range(args.bursts):
            wall += await burst(lambda i: session.call_tool("echo", {"text": "1"}), args.runs)
        show("MCP SDK floor: trivial calls at once", before, sample(pid, []), wall, n)

    async with omcp({"SANDBOX_POOL_SIZE": "0"}) as client:
        for stateful in (False, True):
            sids = [await client.create(stateful=stateful) for _ in range(4)]
            for sid in sids:
                await client.run(sid, "print(1)")
            ids = [
                c.id
                for c in docker.from_env().containers.list(
                    filters={"label": "omcp_py.managed-by=omcp_py"}
                )
                if c.labels.get("omcp_py.sandbox-id") in sids
            ]
            pid = _server_pid(b"-m\0omcp_py")
            before, wall = sample(pid, ids), 0.0
            for _ in range(args.bursts):
                wall += await burst(lambda i, s=sids: client.run(s[i % 4], "print(1)"), args.runs)
            kind = "stateful" if stateful else "stateless"
            show(
                f"omcp_py: {kind} print(1) over 4 sandboxes at once",
                before,
                sample(pid, ids),
                wall,
                n,
            )
            for sid in sids:
                await client.remove(sid)


if __name__ == "__main__":
    anyio.run(main)
