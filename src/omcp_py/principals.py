"""Whose request this is: the principal a bearer token names (HTTP), or the one local
user (stdio). Set once per tool call at the MCP boundary (``main.py``) and read where
sandboxes are handed out and looked up (``sandboxes.Registry``), so no verb can forget
to check it: another principal's sandbox is "not found" everywhere."""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

LOCAL = ""  # stdio: one user, who owns every sandbox of the server

_current: ContextVar[str] = ContextVar("omcp_principal", default=LOCAL)


def current() -> str:
    """The principal of the tool call being served (LOCAL outside one)."""
    return _current.get()


@contextmanager
def acting_as(principal: str) -> Iterator[None]:
    """Serve the block as ``principal``."""
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)
