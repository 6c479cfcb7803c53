"""SANDBOX_PRELOAD (issue 19 item 1) with the recommended image (numpy, pandas,
matplotlib): a run finds the data stack imported, and still starts fresh: what one run
does to a module, to numpy's random state or to its figures is never seen by the next;
an install that replaces a preloaded module is what the next run imports."""

from pathlib import Path

from conftest import start_server, zip_wheel

SEEDED = "0.417022004702574"  # np.random.seed(1); np.random.rand()


async def test_preloaded_runs_start_fresh(sandbox_image: str, tmp_path: Path) -> None:
    house = tmp_path / "wheels"
    house.mkdir(mode=0o755)
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
        marked, drawn = after["output"].splitlines()
        assert marked == "False []" and drawn != SEEDED and after["images"] == [], after
        again = await server.run(sid, "import numpy as np\nprint(np.random.rand())")
        # Each run's interpreter imported numpy itself: no random state is shared.
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


async def test_no_preload_by_default(sandbox_image: str, tmp_path: Path) -> None:
    env = {"DOCKER_IMAGE": sandbox_image}
    async with start_server(env, cwd=tmp_path) as server:
        sid = await server.create()
        shown = await server.run(sid, "import sys\nprint('numpy' in sys.modules)")
    assert shown["output"] == "False\n"
