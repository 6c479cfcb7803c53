"""Programs that run inside containers, and the host side that drives them.

``sandbox_runner.py`` (PID 1 of every sandbox) and ``sandbox_install.py`` (run in
the installer container, never in a sandbox) are stdlib-only programs delivered on
the command line (``python3 -I -c SOURCE``): the image needs nothing but Python.
They are never imported on the host.
"""

from importlib.resources import files

RUNNER_SOURCE = files(__package__).joinpath("sandbox_runner.py").read_text(encoding="utf-8")
INSTALL_SOURCE = files(__package__).joinpath("sandbox_install.py").read_text(encoding="utf-8")
