"""Programs that run inside a sandbox, and the host side that drives them.

``sandbox_init.py``, ``sandbox_exec.py`` and ``sandbox_install.py`` (run in the
installer container, never in a sandbox) are stdlib-only programs delivered
into the container on the command line (``python3 -I -c SOURCE``): the image
needs nothing but Python. They are never imported on the host.
"""

from importlib.resources import files

INIT_SOURCE = files(__package__).joinpath("sandbox_init.py").read_text(encoding="utf-8")
EXEC_SOURCE = files(__package__).joinpath("sandbox_exec.py").read_text(encoding="utf-8")
INSTALL_SOURCE = files(__package__).joinpath("sandbox_install.py").read_text(encoding="utf-8")
