"""``python -m omcp_py``: the same command as ``omcp_py``."""

from omcp_py.cli import main

if __name__ == "__main__":
    main()
