"""Attacks on time: code that will not stop. Each result comes within its timeout plus
5 s, says it timed out, and nothing the run started is left in the sandbox."""

from conftest import Case, Server, container_of, eventually, user_processes

STUBBORN = """
import signal, subprocess, sys
IGNORE = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
PARENT = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', %r]); " % IGNORE + IGNORE
subprocess.Popen([sys.executable, "-c", PARENT])  # a child and a grandchild ignoring SIGTERM
subprocess.Popen([sys.executable, "-c", IGNORE], start_new_session=True)  # a setsid daemon
print("started", flush=True)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    pass
"""


async def test_timeout_kills_the_whole_tree(server: Server, sandbox: str, docker_client) -> None:
    result = await server.run(sandbox, STUBBORN, timeout=3)
    assert result["timed_out"] is True and result["success"] is False
    assert result["output"] == "started\n"  # the partial output is kept
    assert "timed out after 3 s" in result["error"]
    assert result["duration_ms"] >= 3000
    container = container_of(docker_client, sandbox)
    assert await eventually(lambda: user_processes(container) == [], 5), user_processes(container)
    assert (await server.run(sandbox, "print('next')"))["output"] == "next\n"


async def test_sleep_in_c_code_and_loops_that_fork_are_killed(server: Server, sandbox: str) -> None:
    sleeper = await server.run(sandbox, "import time; time.sleep(600)", timeout=2)
    assert sleeper["timed_out"] is True
    forker = await server.run(
        sandbox,
        "import os, time\n"
        "while True:\n"
        "    if os.fork() == 0:\n"
        "        continue\n"  # the child carries the loop on
        "    os._exit(0)\n",
        timeout=2,
    )
    assert forker["timed_out"] is True or forker["exit_code"] == 0
    assert (await server.run(sandbox, "print(1)"))["output"] == "1\n"


async def test_background_processes_end_with_the_run(
    server: Server, sandbox: str, docker_client
) -> None:
    result = await server.run(
        sandbox,
        "import subprocess\n"
        "subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "subprocess.Popen(['sleep', '600'])\n"
        "print('returned')",
    )
    assert result["output"] == "returned\n" and result["timed_out"] is False
    container = container_of(docker_client, sandbox)
    assert await eventually(lambda: user_processes(container) == [], 5), user_processes(container)


async def test_input_gets_end_of_file(server: Server, sandbox: str) -> None:
    result = await server.run(sandbox, "input()")
    assert result["success"] is False and "EOFError" in result["error"]


async def test_a_plain_infinite_loop(case: Case) -> None:
    result = await case.attack("while True:\n    pass\n", timeout=2)
    assert result["timed_out"] is True and result["exit_code"] == 137
    await case.recovered()


async def test_a_thread_that_never_ends_holds_the_run_only_until_its_timeout(case: Case) -> None:
    # Like `python -c`, a run waits for its threads; a thread that sleeps forever
    # makes the run time out, no longer.
    result = await case.attack(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(600,)).start()\n"
        "print('main done', flush=True)\n",
        timeout=2,
    )
    assert result["timed_out"] is True and result["output"] == "main done\n"
    await case.recovered()


async def test_a_daemon_started_with_setsid_and_double_fork_ends_with_the_run(
    case: Case,
) -> None:
    result = await case.attack(
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.chdir('/')\n"
        "        while True:\n"
        "            time.sleep(1)\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n"
        "print('detached')\n",
        timeout=5,
    )
    assert result["success"] is True and result["output"] == "detached\n"
    await case.recovered()


async def test_a_stateful_interpreter_stuck_in_a_loop(server, docker_client) -> None:
    sandbox = await server.create(stateful=True)
    attack = Case(server, sandbox, docker_client)
    await server.run(sandbox, "x = 1")
    result = await attack.attack("while True:\n    x += 1\n", timeout=2)
    assert result["timed_out"] is True and result["state"] == "lost"
    await attack.recovered()
