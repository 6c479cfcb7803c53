"""What the package cache buys: an install into a new sandbox, through the MCP client.

    uv run --frozen python bench/install_cache.py [--package pandas] [--runs N]

Needs the index (PyPI, or PACKAGE_INDEX_URL) and, behind a TLS-intercepting proxy,
PACKAGE_CA_BUNDLE, as a user's server would. In one run, on one engine and image:

- the plain docker SDK: `pip install --user PACKAGE` in a bridge container (no
  hardening, no egress filter, no cache; pip compiles as it installs): the floor;
- omcp_py with PACKAGE_CACHE_SIZE=0 and INSTALLER_CPUS=1 (no cache, one compiling
  process: what an install cost before the cache);
- omcp_py with the defaults and an empty cache volume: the first install (it fills
  the cache), then N installs into new sandboxes (from the cache).

Each figure is one install into a sandbox nobody installed into (median of N where
there are N). Ratios are against the first install with the cache. Figures, not
tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

import anyio
import docker

from bench import omcp

TARGET = 0.25  # the second install, as a share of the first


def index_settings() -> dict[str, str]:
    """The servers reach the index as a user's would: through this CA bundle, if any."""
    names = ("PACKAGE_CA_BUNDLE", "PACKAGE_INDEX_URL")
    return {name: os.environ[name] for name in names if name in os.environ}


async def install_once(client, package: str) -> float:
    sid = await client.create()
    started = time.perf_counter()
    result = await client.call(
        "install_package", {"sandbox_id": sid, "package": package, "timeout": 900}
    )
    took = time.perf_counter() - started
    if not result.get("success"):
        raise RuntimeError(f"install failed: {result.get('error')}")
    await client.remove(sid)
    return took


def plain_docker(package: str, image: str) -> float:
    client = docker.from_env()
    kwargs: dict = {"environment": {"HOME": "/tmp", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}}
    bundle = os.environ.get("PACKAGE_CA_BUNDLE")
    if bundle:
        kwargs["volumes"] = {bundle: {"bind": "/ca.pem", "mode": "ro"}}
        kwargs["environment"]["PIP_CERT"] = "/ca.pem"
    command = ["python3", "-m", "pip", "install", "-q", "--user", "--no-cache-dir", package]
    started = time.perf_counter()
    client.containers.run(image, command, remove=True, user="1000:1000", **kwargs)
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="pandas")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    image = os.environ.get("DOCKER_IMAGE", "python:3.11-slim")
    volume = f"omcp-bench-cache-{uuid.uuid4().hex[:8]}"
    rows: list[tuple[str, float]] = []
    reach = index_settings()
    floor = await anyio.to_thread.run_sync(plain_docker, args.package, image)
    rows.append(("plain docker SDK: pip install in a bridge container", floor))
    env = {**reach, "PACKAGE_CACHE_SIZE": "0", "INSTALLER_CPUS": "1", "SANDBOX_POOL_SIZE": "0"}
    async with omcp(env) as client:
        before = [await install_once(client, args.package) for _ in range(args.runs)]
    rows.append(("omcp_py, no cache, INSTALLER_CPUS=1 (before)", statistics.median(before)))
    env = {**reach, "PACKAGE_CACHE_VOLUME": volume, "SANDBOX_POOL_SIZE": "0"}
    try:
        async with omcp(env) as client:
            first = await install_once(client, args.package)
            later = [await install_once(client, args.package) for _ in range(args.runs)]
    finally:
        docker.from_env().volumes.get(volume).remove(force=True)
    rows.append(("omcp_py, first install (fills the cache)", first))
    rows.append(("omcp_py, next sandbox (from the cache)", statistics.median(later)))

    print(f"\n{args.package} into a new sandbox; image {image}; median of {args.runs}")
    width = max(len(name) for name, _ in rows)
    for name, took in rows:
        print(f"{name.ljust(width)}  {took:7.2f} s  {took / first:5.2f}x of the first")
    share = statistics.median(later) / first
    print(
        f"next / first: {share:.2f} (target <= {TARGET}); next / before: "
        f"{statistics.median(later) / statistics.median(before):.2f}"
    )


if __name__ == "__main__":
    anyio.run(main)
