"""Every hardening promise, checked from inside a real sandbox."""

import anyio
import pytest
from conftest import Server, container_of, eventually, processes_in, start_server

pytestmark = pytest.mark.anyio


async def test_no_network_but_loopback(server: Server, sandbox: str) -> None:
    result = await server.run(
        sandbox,
        "import os, socket\n"
        "print(sorted(os.listdir('/sys/class/net')))\n"
        "for target in [('1.1.1.1', 53), ('8.8.8.8', 443)]:\n"
        "    s = socket.socket(); s.settimeout(3)\n"
        "    try:\n"
        "        s.connect(target); print('CONNECTED', target)\n"
        "    except OSError as e:\n"
        "        print('refused', type(e).__name__)\n"
        "try:\n"
        "    socket.getaddrinfo('pypi.org', 443); print('RESOLVED')\n"
        "except OSError as e:\n"
        "    print('no dns')\n",
    )
    lines = result["output"].splitlines()
    assert lines[0] == "['lo']"
    assert "CONNECTED" not in result["output"] and "RESOLVED" not in result["output"]
    assert lines.count("no dns") == 1 and len([x for x in lines if x.startswith("refused")]) == 2


async def test_root_filesystem_is_read_only(server: Server, sandbox: str, docker_client) -> None:
    result = await server.run(
        sandbox,
        "import errno\n"
        "for path in ['/x', '/usr/lib/x', '/etc/passwd', '/home/other']:\n"
        "    try:\n"
        "        open(path, 'a').write('x'); print('WROTE', path)\n"
        "    except OSError as e:\n"
        "        print(path, errno.errorcode[e.errno])\n",
    )
    assert "WROTE" not in result["output"]
    assert set(result["output"].split()[1::2]) <= {"EROFS", "EACCES"}, result
    # EACCES alone would not prove it: root in the container owns / and is stopped
    # only by the read-only mount (gVisor checks permissions first, Linux the mount).
    container = container_of(docker_client, sandbox)
    probe = container.exec_run(["python3", "-c", "open('/x', 'w')"], user="0")
    assert probe.exit_code != 0 and b"Read-only file system" in probe.output, probe


async def test_unprivileged_user_without_capabilities(server: Server, sandbox: str) -> None:
    result = await server.run(
        sandbox,
        "import ctypes, os\n"
        "print(os.getuid(), os.getgid(), os.geteuid(), os.getgroups())\n"
        "lines = open('/proc/self/status').read().splitlines()\n"
        "status = dict(l.split(':\\t') for l in lines if ':\\t' in l)\n"
        "print(*(status.get(k, '-') for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')))\n"
        "PR_GET_NO_NEW_PRIVS = 39\n"
        "print(ctypes.CDLL(None).prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0))\n",
    )
    ids, caps, no_new_privs = result["output"].splitlines()
    assert ids in ("1000 1000 1000 []", "1000 1000 1000 [1000]")
    # No capability anywhere, not even in the bounding set (gVisor shows no CapAmb).
    assert set(caps.split()) - {"-"} == {"0000000000000000"}, caps
    assert no_new_privs == "1"


async def test_setuid_and_mount_fail(server: Server, sandbox: str) -> None:
    result = await server.run(
        sandbox,
        "import os, subprocess\n"
        "try:\n"
        "    os.setuid(0); print('BECAME ROOT')\n"
        "except PermissionError:\n"
        "    print('setuid refused')\n"
        "r = subprocess.run(['mount', '-t', 'tmpfs', 'x', '/mnt'], capture_output=True)\n"
        "print('mount', r.returncode != 0)\n",
    )
    assert result["output"] == "setuid refused\nmount True\n"


async def test_environment_holds_nothing_of_the_server(tmp_path) -> None:
    canary = "canary-7f3e1d2c-secret"
    async with start_server(
        {"OMCP_CANARY_SECRET": canary, "AWS_SECRET_ACCESS_KEY": canary}, cwd=tmp_path
    ) as srv:
        sid = await srv.create()
        result = await srv.run(
            sid,
            "import os\n"
            "print(dict(os.environ))\n"
            "for p in os.listdir('/proc'):\n"
            "    if p.isdigit():\n"
            "        try:\n"
            "            print(p, open(f'/proc/{p}/environ', 'rb').read())\n"
            "        except OSError as e:\n"
            "            print(p, 'unreadable')\n",
        )
        assert canary not in result["output"] and canary not in (result["error"] or "")
        # PID 1 runs as root: its environ is closed to the code (gVisor opens it, and it
        # holds only the sandbox's own, fixed environment).
        [pid1] = [line for line in result["output"].splitlines() if line.startswith("1 ")]
        assert pid1 == "1 unreadable" or "PYTHONUSERBASE" in pid1, pid1


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


async def test_init_is_pid_1_and_reaps_orphans(server: Server, sandbox: str) -> None:
    result = await server.run(
        sandbox,
        "import os, time\n"
        "print(open('/proc/1/cmdline', 'rb').read().split(b'\\0')[0].decode())\n"
        "if os.fork() == 0:\n"
        "    if os.fork() == 0:\n"
        "        os._exit(0)\n"  # grandchild: exits, reparented to PID 1
        "    time.sleep(0.2)\n"
        "    os._exit(0)\n"
        "time.sleep(2.5)\n"
        "os.wait()\n"
        "zombies = []\n"
        "for p in os.listdir('/proc'):\n"
        "    if p.isdigit():\n"
        "        try:\n"
        "            if open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0] == 'Z':\n"
        "                zombies.append(p)\n"
        "        except OSError:\n"
        "            pass\n"
        "print('zombies', zombies)\n"
        "try:\n"
        "    os.kill(1, 9); print('signalled init')\n"
        "except OSError as e:\n"
        "    print('init', type(e).__name__)\n",
    )
    lines = result["output"].splitlines()
    assert lines[0] == "python3"
    assert lines[1] == "zombies []"
    # Signals from inside never reach PID 1: the sandbox survives its own code.
    await anyio.sleep(0.5)
    assert (await server.run(sandbox, "print('up')"))["output"] == "up\n"


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
