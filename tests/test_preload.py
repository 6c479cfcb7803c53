"""SANDBOX_PRELOAD (issue 19 item 1) with the recommended image (numpy, pandas,
matplotlib): a run finds the data stack imported (forked from the zygote, which imported
it once), and still starts fresh: what one run does to a module, to numpy's random state
or to its figures is never seen by the next; an install that replaces a preloaded module
is what the next run imports; no run can reach into the zygote, and one that stops or
kills it costs the next runs time, never their answer or their freshness."""

import asyncio
from pathlib import Path

import pytest
from conftest import readable_dir, start_server, zip_wheel

SEEDED = "0.417022004702574"  # np.random.seed(1); np.random.rand()


async def test_preloaded_runs_start_fresh(sandbox_image: str, tmp_path: Path) -> None:
    house = readable_dir(tmp_path / "wheels")
    name, data = zip_wheel("pandas", "99.0", {"pandas.py": "__version__ = '99.0'\n"})
    (house / name).write_bytes(data)
    (house / name).chmod(0o644)
    env = {
        "DOCKER_IMAGE": sandbox_image,
        "PACKAGE_WHEELHOUSE": str(house),
        "SANDBOX_PRELOAD": "numpy, pandas, matplotlib.pyplot, omcp_no_such_module",
    }
    async with start_server(env, cwd=tmp_path) as server:
        sid = await server.create()
        stateful = await server.create(stateful=True)
        loaded = await server.run(
            sid,
            "import sys\nprint(sorted(m for m in ('numpy', 'pandas', 'matplotlib.pyplot') "
            "if m in sys.modules))",
        )
        assert loaded["output"] == "['matplotlib.pyplot', 'numpy', 'pandas']\n", loaded
        tamper = await server.run(
            sid,
            "import numpy as np, pandas as pd, matplotlib.pyplot as plt\n"
            "pd.DataFrame.omcp_mark = 1\nnp.random.seed(1)\nprint(np.random.rand())\n"
            "plt.plot([1, 2])\n",
        )
        assert tamper["output"] == SEEDED + "\n" and len(tamper["images"]) == 1, tamper
        after = await server.run(
            sid,
            "import numpy as np, pandas as pd, matplotlib.pyplot as plt\n"
            "print(hasattr(pd.DataFrame, 'omcp_mark'), plt.get_fignums())\n"
            "print(np.random.rand())\n",
        )
        assert after["output"].count("\n") == 2, after
        marked, drawn = after["output"].splitlines()
        assert marked == "False []" and drawn != SEEDED and after["images"] == [], after
        again = await server.run(sid, "import numpy as np\nprint(np.random.rand())")
        # Forked from one zygote, each run still draws its own numbers.
        assert again["output"].strip() != drawn
        # A stateful sandbox starts from a preloaded interpreter too.
        kept = await server.run(stateful, "import sys\nprint('pandas' in sys.modules)")
        assert kept["output"] == "True\n"

        installed = await server.call(
            "install_package", {"sandbox_id": sid, "package": "pandas==99.0", "timeout": 120}
        )
        assert installed["success"] is True, installed
        new = await server.run(sid, "import pandas\nprint(pandas.__version__)")
        assert new["output"] == "99.0\n", new  # not the preloaded one


# The default is the server's decision from the image; what a zygote does under gVisor
# is checked by the tests around this one.
@pytest.mark.any_runtime
async def test_the_data_stack_is_preloaded_by_default_where_the_image_has_it(
    sandbox_image: str, tmp_path: Path
) -> None:
    probe = (
        "import os, sys\n"
        "names = [open('/proc/%s/comm' % p).read().strip() for p in os.listdir('/proc')\n"
        "         if p.isdigit()]\n"
        "print('numpy' in sys.modules, 'omcp-zygote' in names)\n"
    )
    for env, expected in (
        ({"DOCKER_IMAGE": sandbox_image}, "True True\n"),
        ({"DOCKER_IMAGE": sandbox_image, "SANDBOX_PRELOAD": "none"}, "False False\n"),
        ({}, "False False\n"),  # python:3.11-slim has none of them: no zygote stays
    ):
        async with start_server(env, cwd=tmp_path) as server:
            sid = await server.create()
            await asyncio.sleep(4)  # the zygote's imports
            shown = await server.run(sid, probe)
        assert shown["output"] == expected, (env, shown)


ZYGOTE = (
    "import os\n"
    "found = [p for p in os.listdir('/proc') if p.isdigit()\n"
    "         and open('/proc/%s/comm' % p).read().strip() == 'omcp-zygote']\n"
)


async def test_runs_cannot_reach_into_the_zygote(sandbox_image: str, tmp_path: Path) -> None:
    env = {"DOCKER_IMAGE": sandbox_image, "SANDBOX_PRELOAD": "numpy"}
    async with start_server(env, cwd=tmp_path) as server:
        sid = await server.create()
        probe = await server.run(
            sid,
            ZYGOTE + "import ctypes\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "zygote = int(found[0])\n"
            "print('ptrace', libc.ptrace(16, zygote, 0, 0), os.strerror(ctypes.get_errno()))\n"
            "try:\n"
            "    open('/proc/%d/mem' % zygote, 'rb').read(1); print('READ mem')\n"
            "except OSError as e:\n"
            "    print('mem', type(e).__name__)\n",
        )
        assert probe["output"].splitlines() == [
            "ptrace -1 Operation not permitted",
            "mem PermissionError",
        ], probe
        # Stopped, then killed: the runs after each still answer, start fresh and find
        # numpy (forked by PID 1 while a new zygote imports, then by it).
        stopped = await server.run(sid, ZYGOTE + "os.kill(int(found[0]), 19); print(found)")
        killed = await server.run(sid, ZYGOTE + "os.kill(int(found[0]), 9); print(found)")
        assert stopped["output"] != killed["output"], (stopped, killed)  # a new one between
        for _ in range(3):
            after = await server.run(sid, "import sys\nprint('numpy' in sys.modules, 'x' in dir())")
            assert after["output"] == "True False\n", after
            await server.run(sid, "x = 1")
        await asyncio.sleep(3)  # the new zygote has imported numpy by now
        last = await server.run(sid, ZYGOTE + "print(len(found))")
        assert last["output"] == "1\n", last
        # A run that takes every process the sandbox may have: when it ends the zygote
        # cannot fork the next child yet; it stays, and the runs after answer.
        zygote = await server.run(sid, ZYGOTE + "print(found)")
        bomb = await server.run(
            sid,
            "import os, time\n"
            "for _ in range(1000):\n"
            "    try:\n"
            "        if os.fork() == 0:\n"
            "            time.sleep(60)\n"
            "            os._exit(0)\n"
            "    except OSError:\n"
            "        print('at the limit')\n"
            "        break\n",
        )
        # (Under gVisor forks cost memory first: the memory guard ends it instead.)
        assert bomb["output"] == "at the limit\n" or "out of memory" in bomb["error"], bomb
        for _ in range(2):
            after = await server.run(
                sid, ZYGOTE + "import sys\nprint(found, 'numpy' in sys.modules)"
            )
            assert after["output"] == zygote["output"].strip() + " True\n", after
