"""omcp_py: an MCP server that gives an AI assistant isolated Python sandboxes.

Importing this package has no side effects: no Docker connection, no logging
setup, nothing printed. The server is built by :func:`omcp_py.main.create_server`.
"""

__version__ = "0.2.0.dev0"  # pyproject.toml says the same (a test checks)
