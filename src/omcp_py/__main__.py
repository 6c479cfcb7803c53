"""``python -m omcp_py``: run the MCP server over stdio."""

from omcp_py.main import main

if __name__ == "__main__":
    main()
