"""Attacks on resources: memory, processes, CPU, disk, file descriptors. Each is held
by a limit, says so clearly, and leaves the sandbox, the server and the neighbours fine."""

import anyio
import pytest
from conftest import Case, Server, container_of, eventually, processes_in


async def test_memory_limit_kills_the_hog_and_says_so(server: Server, sandbox: str) -> None:
    result = await server.run(
        sandbox,
        "print('start', flush=True)\nblocks = []\n"
        "while True:\n    blocks.append(bytearray(50 * 2**20))",
    )
    assert result["success"] is False
    assert result["exit_code"] == 137
    assert "ran out of memory" in result["error"]
    assert (await server.run(sandbox, "print('alive')"))["output"] == "alive\n"


async def test_tmpfs_fills_with_a_clear_error_not_an_oom(server: Server, sandbox: str) -> None:
    result = await server.run(
        sandbox,
        "import errno\n"
        "try:\n"
        "    with open('/tmp/fill', 'wb') as f:\n"
        "        for _ in range(200):\n"
        "            f.write(b'x' * 2**20)\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n",
    )
    assert result["output"] == "ENOSPC\n"
    assert (await server.run(sandbox, "import os; os.remove('/tmp/fill'); print('ok')"))[
        "output"
    ] == "ok\n"


async def test_fork_bomb_is_contained(server: Server, docker_client) -> None:
    bomb_box = await server.create()
    other = await server.create()
    result = await server.run(
        bomb_box,
        "import os\n"
        "n = 0\n"
        "while True:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as e:\n"
        "        print('fork failed after', n, type(e).__name__, flush=True)\n"
        "        break\n"
        "    if pid == 0:\n"
        "        import time\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    n += 1\n",
        timeout=20,
    )
    if "fork failed after" in result["output"]:
        forks = int(result["output"].split()[3])
        assert forks < 128  # SANDBOX_PIDS_LIMIT
    else:
        # Under gVisor a forked Python costs its kernel about 6 MiB: SANDBOX_MEMORY
        # runs out before the process limit, and the runner stops the bomb.
        assert result["exit_code"] == 137 and "ran out of memory" in result["error"], result
    # Nothing of the bomb survives the run, and the server and its neighbours are fine.
    container = container_of(docker_client, bomb_box)
    assert await eventually(lambda: len(processes_in(container)) == 1, 5), processes_in(container)
    assert (await server.run(other, "print('neighbour ok')"))["output"] == "neighbour ok\n"
    assert (await server.run(bomb_box, "print('recovered')"))["output"] == "recovered\n"


async def test_cpu_is_limited(server: Server, sandbox: str) -> None:
    result = await server.run(
        sandbox,
        "import time\n"
        "wall0, cpu0 = time.monotonic(), time.process_time()\n"
        "while time.monotonic() - wall0 < 3:\n"
        "    pass\n"
        "print((time.process_time() - cpu0) / (time.monotonic() - wall0))\n",
    )
    # SANDBOX_CPUS=0.5: the loop gets about half a CPU (a property, not a benchmark).
    assert float(result["output"]) < 0.75


@pytest.mark.parametrize("directory", ["/sandbox", "/home/sandbox"])
async def test_filling_the_working_directory_and_home(case: Case, directory: str) -> None:
    result = await case.attack(
        "import errno\n"
        "try:\n"
        f"    with open('{directory}/fill', 'wb') as f:\n"
        "        for _ in range(200):\n"
        "            f.write(b'x' * 2**20)\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n",
    )
    assert result["output"] == "ENOSPC\n", result
    # Files persist between runs: the sandbox still works, and freeing the space helps.
    after = await case.server.run(
        case.sandbox, f"import os; os.remove('{directory}/fill'); open('{directory}/x', 'w')"
    )
    assert after["success"] is True, after
    await case.recovered()


async def test_ten_thousand_open_files(case: Case) -> None:
    result = await case.attack(
        "files = []\n"
        "try:\n"
        "    for i in range(10_000):\n"
        "        files.append(open('/tmp/many', 'a'))\n"
        "except OSError as e:\n"
        "    print('stopped at', len(files), e.strerror)\n"
        "print('open', len(files))\n",
        timeout=30,
    )
    assert result["success"] is True, result
    assert result["output"].splitlines()[-1].startswith("open "), result
    await case.recovered()


@pytest.mark.slow
async def test_a_cpu_burn_does_not_slow_a_neighbour(case: Case) -> None:
    neighbour = await case.server.create()
    measure = (
        "import time\n"
        "started = time.monotonic()\n"
        "n = 0\n"
        "while n < 3_000_000:\n"
        "    n += 1\n"
        "print(time.monotonic() - started)\n"
    )
    alone = float((await case.server.run(neighbour, measure))["output"])
    beside = []

    async def burn() -> None:
        await case.attack("while True:\n    pass\n", timeout=8)

    async with anyio.create_task_group() as tg:
        tg.start_soon(burn)
        await anyio.sleep(1)
        for _ in range(2):
            beside.append(float((await case.server.run(neighbour, measure))["output"]))
    # Each sandbox has SANDBOX_CPUS=0.5 of this machine's 2: the burn takes its own
    # share, not the neighbour's (a generous bound: the machine is shared).
    assert min(beside) < alone * 2.0, (alone, beside)
    await case.recovered()
