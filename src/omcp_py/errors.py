"""Failures of the server's own job, each with a message that says what to do next.

The server turns every :class:`OmcpError` into an MCP tool error (``isError``).
Code that the user runs and that fails is not an error here: it is a normal
execution result with ``success: false``.
"""


class OmcpError(Exception):
    """Base class: an infrastructure failure the model can read and act on."""


class ConfigError(OmcpError):
    """A setting has a value that is not allowed."""


class DockerUnavailable(OmcpError):
    """The Docker engine cannot be reached."""

    reason: str = ""  # the cause in a few words, for `omcp_py doctor`


class IsolationUnavailable(OmcpError):
    """The engine cannot enforce a limit every sandbox must have."""


class EngineError(OmcpError):
    """The Docker engine answered, but failed the request."""


class SandboxNotFound(OmcpError):
    """No sandbox of this server has that id (or it has stopped)."""


class SandboxLimitReached(OmcpError):
    """Creating one more sandbox would exceed MAX_SANDBOXES."""


class SandboxStillActive(OmcpError):
    """A sandbox running code or an install was asked to be removed without force."""


class SandboxCreateFailed(OmcpError):
    """The engine could not create or start the sandbox container."""


class ImageUnavailable(SandboxCreateFailed):
    """The sandbox image is not on the engine and could not be pulled."""


class InvalidArgument(OmcpError):
    """A tool argument is outside what the server accepts."""


class FileRefused(InvalidArgument):
    """A file tool was given a path it may not use, or a file it may not move."""
