"""Escape and leaks, checked from inside: no network, no writes outside the tmpfs, no
privilege, no namespaces or modules, no secret of the server, no way to the host."""

import os

import anyio
from conftest import (
    Case,
    Server,
    container_of,
    eventually,
    start_server,
    user_processes,
)


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


async def test_nothing_written_at_run_time_can_be_executed(server: Server, sandbox: str) -> None:
    # A binary and a script copied into each writable place and made executable: exec
    # fails (directly and through subprocess), while the same binary on the image runs
    # (the check can fail). Linux also refuses to map a library from there; gVisor
    # maps it (its mmap ignores noexec: docs/security.md).
    result = await server.run(
        sandbox,
        "import ctypes, glob, os, shutil, stat, subprocess, sys\n"
        "lib = sorted(glob.glob(sys.base_prefix + '/lib/python3*/lib-dynload/*.so'))[0]\n"
        "print('image', subprocess.run(['/bin/true']).returncode)\n"
        "for where in ['/tmp', '/sandbox', os.environ['HOME']]:\n"
        "    binary, script = where + '/true', where + '/run.sh'\n"
        "    shutil.copy('/bin/true', binary)\n"
        "    open(script, 'w').write('#!/bin/sh\\necho RAN\\n')\n"
        "    for path in (binary, script):\n"
        "        os.chmod(path, 0o755)\n"
        "        try:\n"
        "            subprocess.run([path]); print('RAN', path)\n"
        "        except PermissionError:\n"
        "            print('refused', path)\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        try:\n"
        "            os.execv(binary, [binary])\n"
        "        except PermissionError:\n"
        "            os._exit(13)\n"
        "    print('execv', where, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
        "    shutil.copy(lib, where + '/lib.so')\n"
        "    try:\n"
        "        ctypes.CDLL(where + '/lib.so'); print('MAPPED', where)\n"
        "    except OSError:\n"
        "        print('no map', where)\n"
        "mounts = [line.split() for line in open('/proc/mounts')]\n"
        "for where in ['/tmp', '/sandbox', os.environ['HOME'], '/opt/omcp/packages']:\n"
        "    options = [m[3] for m in mounts if m[1] == where][-1].split(',')\n"
        "    print('mount', where, 'noexec' in options)\n",
    )
    lines = result["output"].splitlines()
    assert "RAN" not in result["output"], result
    assert lines[0] == "image 0", result
    gvisor = "runsc" in os.environ.get("SANDBOX_RUNTIME", "")
    for where in ("/tmp", "/sandbox", "/home/sandbox"):
        assert f"refused {where}/true" in lines and f"refused {where}/run.sh" in lines, result
        assert f"execv {where} 13" in lines, result
        assert gvisor or f"no map {where}" in lines, result
        assert f"mount {where} True" in lines, result
    # The package volume is where compiled extensions live: it must not be noexec
    # (test_install.py loads one from there).
    assert "mount /opt/omcp/packages False" in lines, result


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


async def test_code_cannot_kill_the_runner(server: Server, sandbox: str, docker_client) -> None:
    # The runner is PID 1, runs as another user (root, four capabilities) and is the
    # namespace's init: no signal, trace or /proc read from the code reaches it.
    result = await server.run(
        sandbox,
        "import ctypes, os, subprocess, signal\n"
        "subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "print(os.getppid())\n"
        "for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGSTOP):\n"
        "    try:\n"
        "        os.kill(os.getppid(), sig); print('sent', sig)\n"
        "    except PermissionError:\n"
        "        pass\n"
        "PTRACE_ATTACH = 16\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('ptrace', libc.ptrace(PTRACE_ATTACH, 1, 0, 0), ctypes.get_errno())\n"
        "for name in ('environ', 'mem', 'fd/0'):\n"
        "    try:\n"
        "        open('/proc/1/' + name, 'rb').read(1); print('read', name)\n"
        "    except OSError:\n"
        "        pass\n"
        "os.kill(-1, signal.SIGKILL)\n"  # all it may signal (on Linux, not itself)
        "print('survived')\n",
        timeout=5,
    )
    # environ may be readable under gVisor (it holds only the sandbox's fixed
    # environment: see test_environment_holds_nothing_of_the_server); nothing else is.
    assert result["output"].replace("read environ\n", "") == "1\nptrace -1 1\nsurvived\n", result
    assert result["success"] is True
    container = container_of(docker_client, sandbox)
    assert await eventually(lambda: user_processes(container) == [], 5), user_processes(container)
    assert (await server.run(sandbox, "print('ok')"))["output"] == "ok\n"


async def test_raw_and_packet_sockets_are_refused(case: Case) -> None:
    result = await case.attack(
        "import socket\n"
        "for family, kind, proto in [(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),\n"
        "                            (socket.AF_PACKET, socket.SOCK_RAW, 0)]:\n"
        "    try:\n"
        "        socket.socket(family, kind, proto); print('OPENED', family)\n"
        "    except OSError as e:\n"
        "        print('refused')\n"
    )
    assert result["output"] == "refused\nrefused\n", result


async def test_namespaces_modules_and_kernel_settings_are_out_of_reach(case: Case) -> None:
    result = await case.attack(
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET = 0x10000000, 0x00020000, 0x40000000\n"
        "for flags in (CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWUSER | CLONE_NEWNS):\n"
        "    print('unshare', libc.unshare(flags))\n"
        "SYS_finit_module, SYS_delete_module = 313, 176\n"  # x86_64
        "fd = os.open('/dev/null', os.O_RDONLY)\n"
        "print('finit_module', libc.syscall(SYS_finit_module, fd, b'', 0))\n"
        "print('delete_module', libc.syscall(SYS_delete_module, b'ext4', 0))\n"
        "for path in ('/proc/sys/kernel/hostname', '/proc/sysrq-trigger',\n"
        "             '/sys/kernel/mm/transparent_hugepage/enabled'):\n"
        "    try:\n"
        "        open(path, 'w').write('x'); print('WROTE', path)\n"
        "    except OSError:\n"
        "        print('refused')\n"
    )
    lines = result["output"].splitlines()
    assert lines[:6] == ["unshare -1"] * 4 + ["finit_module -1", "delete_module -1"], result
    assert lines[6:] == ["refused"] * 3, result
    # What ordinary code does with processes and threads still works beside the filter.
    normal = await case.server.run(
        case.sandbox,
        "import multiprocessing, subprocess, threading\n"
        "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
        "print(subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip())\n"
        "with multiprocessing.Pool(2) as pool:\n"
        "    print(sum(pool.map(abs, [-1, -2, -3])))\n",
    )
    assert normal["output"] == "thread\nchild\n6\n", normal
    await case.recovered()


async def test_no_docker_socket_and_no_host_path_inside(
    tmp_path, docker_client, monkeypatch
) -> None:
    # The server runs in tmp_path with a file there and in its HOME: none of it, and
    # no Docker socket, is anywhere in the sandbox's file system.
    marker = tmp_path / "host-only-canary.txt"
    marker.write_text("host secret")
    async with start_server({"HOME": str(tmp_path)}, cwd=tmp_path) as srv:
        sid = await srv.create()
        result = await srv.run(
            sid,
            "import os\n"
            "found = []\n"
            "for top in ('/', ):\n"
            "    for root, dirs, files in os.walk(top):\n"
            "        if root in ('/proc', '/sys', '/dev'):\n"
            "            dirs[:] = []\n"
            "            continue\n"
            "        for name in files + dirs:\n"
            "            if 'docker.sock' in name or 'host-only-canary' in name:\n"
            "                found.append(os.path.join(root, name))\n"
            f"print(found, os.path.exists({str(tmp_path)!r}))\n",
            timeout=60,
        )
        assert result["output"] == "[] False\n", result
