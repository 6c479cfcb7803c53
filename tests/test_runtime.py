"""SANDBOX_RUNTIME: sandboxes under gVisor (runsc), checked from inside, in every pass of
the suite (CI runs the whole suite a second time with SANDBOX_RUNTIME=runsc)."""

import os
from pathlib import Path

import pytest
from conftest import container_of, start_server

KERNEL = "import platform; print(platform.release())"


@pytest.mark.parametrize("runtime", ["", "runsc"])
async def test_sandboxes_run_under_the_configured_runtime(
    runtime: str, tmp_path: Path, docker_client
) -> None:
    async with start_server({"SANDBOX_RUNTIME": runtime}, cwd=tmp_path) as srv:
        sid = await srv.create()
        release = (await srv.run(sid, KERNEL))["output"].strip()
        container = container_of(docker_client, sid)
        if runtime:
            # gVisor's own kernel answers, not the host's.
            assert release != os.uname().release
            assert container.attrs["HostConfig"]["Runtime"] == "runsc"
        else:
            assert release == os.uname().release


async def test_gvisor_keeps_the_sandbox_through_memory_and_fork_bombs(
    tmp_path: Path, docker_client
) -> None:
    # gVisor's memory and processes are its kernel's: the host's limits alone would
    # end the whole sandbox. The runner holds the code to SANDBOX_MEMORY and to
    # SANDBOX_PIDS_LIMIT processes inside, and the sandbox lives on.
    async with start_server({"SANDBOX_RUNTIME": "runsc"}, cwd=tmp_path) as srv:
        sid = await srv.create()
        await srv.run(sid, "open('/sandbox/kept', 'w').write('yes')")
        hog = await srv.run(sid, "blocks = []\nwhile True:\n    blocks.append(bytearray(2**25))")
        assert hog["exit_code"] == 137 and "ran out of memory" in hog["error"], hog
        bomb = await srv.run(
            sid,
            "import os, time\n"
            "n = 0\n"
            "while True:\n"
            "    try:\n"
            "        pid = os.fork()\n"
            "    except OSError:\n"
            "        print('fork refused after', n, flush=True)\n"
            "        break\n"
            "    if pid == 0:\n"
            "        time.sleep(60)\n"
            "        os._exit(0)\n"
            "    n += 1\n",
            timeout=30,
        )
        assert "fork refused after" in bomb["output"] or bomb["exit_code"] == 137, bomb
        after = await srv.run(sid, "print(open('/sandbox/kept').read())")
        assert after["output"] == "yes\n", (after, bomb)
        assert container_of(docker_client, sid).attrs["State"]["Running"] is True


async def test_an_unknown_runtime_is_refused_naming_the_offered_ones(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    with log.open("w") as errlog:
        env = {"SANDBOX_RUNTIME": "no-such-runtime", "SANDBOX_POOL_SIZE": "0"}
        async with start_server(env, cwd=tmp_path, errlog=errlog) as srv:
            message = await srv.error("create_sandbox", {})
    for text in (message, log.read_text()):  # the tool says it, and so did the start
        assert "SANDBOX_RUNTIME='no-such-runtime'" in text
        assert "runc" in text and "runsc" in text
