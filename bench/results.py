"""Figures, files and cancellation: what they cost, beside a baseline in the same run.

    uv run --frozen python bench/results.py [--runs N]

Needs an image with matplotlib (default: the recommended one, `omcp_py image build`;
or SANDBOX_IMAGE=...). Through the MCP stdio client, as an assistant sees it:

- figures: a run drawing 3 figures that come back as images, beside the same run
  saving them with savefig (drawing, no transport); a 4000x4000 figure scaled to fit;
- files: a 5 MiB upload and download through the tools, beside put_archive and
  get_archive (what `docker cp` does) of the same bytes into a plain container;
- cancellation: from the client's cancel to the sandbox answering print(1) again.

Figures, not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tarfile
import time
from pathlib import Path

import anyio
import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Client, omcp

IMAGE = os.environ.get("SANDBOX_IMAGE", "omcp-py-sandbox:latest")
THREE = (
    "import matplotlib.pyplot as plt\n"
    "for i in range(3):\n"
    "    plt.figure(); plt.plot(range(100), [x * x * (i + 1) for x in range(100)])\n"
)
SAVED = THREE + (
    "for n in plt.get_fignums():\n    plt.figure(n).savefig(f'f{n}.png')\nplt.close('all')\n"
)
HUGE = (
    "import matplotlib.pyplot as plt, numpy as np\n"
    "plt.figure(figsize=(40, 40)); plt.imshow(np.random.default_rng(1).random((400, 400)))\n"
)


def median(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms"


async def figures(client: Client, runs: int) -> None:
    sandbox = await client.create()
    await client.run(sandbox, "import matplotlib.pyplot")  # font cache, first import
    shown, saved, sizes = [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        result = await client.session.call_tool(
            "execute_python_code", {"sandbox_id": sandbox, "code": THREE}
        )
        shown.append(time.perf_counter() - started)
        sizes = [len(block.data) for block in result.content if block.type == "image"]
        started = time.perf_counter()
        await client.run(sandbox, SAVED)
        saved.append(time.perf_counter() - started)
    print(
        f"3 figures as images: {median(shown)}  (savefig to files: {median(saved)}, "
        f"ratio {statistics.median(shown) / statistics.median(saved):.2f}x); "
        f"base64 sizes {sizes}, total {sum(sizes)}"
    )
    started = time.perf_counter()
    result = await client.session.call_tool(
        "execute_python_code", {"sandbox_id": sandbox, "code": HUGE, "timeout": 120}
    )
    info = json.loads(result.content[0].text)["images"][0]
    [image] = [block for block in result.content if block.type == "image"]
    print(
        f"4000x4000 figure: {time.perf_counter() - started:.2f} s -> {info['mime_type']} "
        f"{info['width']}x{info['height']}, {len(image.data)} base64 bytes"
    )


async def files(client: Client, runs: int) -> None:
    data = os.urandom(5 * 1024 * 1024)
    encoded = base64.b64encode(data).decode()
    sandbox = await client.create()
    up, down = [], []
    for _ in range(runs):
        started = time.perf_counter()
        await client.call(
            "upload_file", {"sandbox_id": sandbox, "path": "d.bin", "content_base64": encoded}
        )
        up.append(time.perf_counter() - started)
        started = time.perf_counter()
        await client.session.call_tool("download_file", {"sandbox_id": sandbox, "path": "d.bin"})
        down.append(time.perf_counter() - started)
    engine = docker.from_env()
    plain = engine.containers.run(
        IMAGE,
        ["sleep", "infinity"],
        detach=True,
        user="0",
        network_disabled=True,
        labels={"omcp-bench": "baseline"},
    )
    try:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            entry = tarfile.TarInfo("d.bin")
            entry.size = len(data)
            archive.addfile(entry, io.BytesIO(data))
        put, get = [], []
        for _ in range(runs):
            started = time.perf_counter()
            plain.put_archive("/tmp", buffer.getvalue())
            put.append(time.perf_counter() - started)
            started = time.perf_counter()
            stream, _ = plain.get_archive("/tmp/d.bin")
            b"".join(stream)
            get.append(time.perf_counter() - started)
    finally:
        plain.remove(force=True)
    print(
        f"5 MiB upload: {median(up)} (put_archive: {median(put)}); "
        f"download: {median(down)} (get_archive: {median(get)})"
    )


async def cancel(client: Client, runs: int) -> None:
    sandbox = await client.create()
    back = []
    for _ in range(runs):
        with anyio.move_on_after(1):
            await client.session.call_tool(
                "execute_python_code",
                {"sandbox_id": sandbox, "code": "while True:\n    pass\n", "timeout": 60},
            )
        started = time.perf_counter()
        await client.run(sandbox, "print(1)")
        back.append(time.perf_counter() - started)
    print(
        f"cancel of a busy loop -> next print(1) answered: {median(back)} "
        f"(the loop's timeout was 60 s)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    # A 5 MiB download is one result: more than the 1m clients accept by default.
    async with omcp({"DOCKER_IMAGE": IMAGE, "MAX_RESULT_SIZE": "16m"}) as client:
        await figures(client, runs)
        await files(client, runs)
        await cancel(client, runs)


if __name__ == "__main__":
    anyio.run(main)
