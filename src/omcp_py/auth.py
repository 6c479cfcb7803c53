"""Who is calling, over HTTP: bearer tokens from a file, each naming a principal.

``AUTH_TOKENS_FILE`` holds one ``name:sha256`` a line (the hex sha256 of a token; the
token itself is never stored), ``#`` comments and blank lines allowed. The file is
read again whenever it changes, so removing a line revokes that token at the next
request; a file that can no longer be read or parsed refuses every token until it is
mended (fail closed). Pure: no Docker, no network.
"""

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass

from mcp.server.auth.provider import AccessToken

from omcp_py.errors import ConfigError

log = logging.getLogger(__name__)

# A principal's name becomes a label value and shows in logs: plain characters only.
PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_LINE = re.compile(r"^(?P<name>[^:\s]+):(?P<hash>[0-9a-fA-F]{64})$")
MAX_FILE = 1024 * 1024


def token_hash(token: str) -> str:
    """The line's hash of ``token``: hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe."""
    return "omcp_" + secrets.token_urlsafe(32)


def parse_tokens(text: str, where: str) -> dict[str, str]:
    """{sha256 hex: principal} from the file's text.

    Raises:
        ConfigError: naming the first bad line and the form it must have.
    """
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None or not PRINCIPAL.fullmatch(match["name"]):
            raise ConfigError(
                f"{where} line {number} is not 'name:sha256-of-the-token' (name: letters, "
                f"digits, '.', '_', '@', '-', at most 64; sha256: 64 hex digits). Make a "
                f"line with `omcp_py token new NAME`."
            )
        digest = match["hash"].lower()
        if digest in found:
            raise ConfigError(f"{where} line {number} repeats a token of {found[digest]!r}.")
        found[digest] = match["name"]
    return found


@dataclass(frozen=True)
class _Seen:
    inode: int
    size: int
    mtime_ns: int


class TokenFileVerifier:
    """The ``mcp`` SDK's ``TokenVerifier`` over AUTH_TOKENS_FILE."""

    def __init__(self, path: str, resource: str | None = None) -> None:
        """Read the file once (the server refuses to start on a bad one).

        Args:
            path: AUTH_TOKENS_FILE.
            resource: this server's URL, reported as the tokens' resource.

        Raises:
            ConfigError: the file cannot be read or has a bad line.
        """
        self.path = path
        self.resource = resource
        self._lock = threading.Lock()
        self._seen: _Seen | None = None
        self._tokens: dict[str, str] = {}
        self._load(strict=True)

    def _load(self, *, strict: bool) -> None:
        try:
            with open(self.path, "rb") as f:
                info = os.fstat(f.fileno())
                seen = _Seen(info.st_ino, info.st_size, info.st_mtime_ns)
                if seen == self._seen:
                    return
                data = f.read(MAX_FILE + 1)
            if len(data) > MAX_FILE:
                raise ConfigError(f"AUTH_TOKENS_FILE {self.path} is larger than 1 MiB.")
            tokens = parse_tokens(data.decode("utf-8", "replace"), f"AUTH_TOKENS_FILE {self.path}")
        except (OSError, ConfigError) as exc:
            message = exc if isinstance(exc, ConfigError) else f"cannot read {self.path}: {exc}"
            if strict:
                raise ConfigError(f"AUTH_TOKENS_FILE: {message}") from None
            if self._seen is not None:
                log.error("%s; every token is refused until it is mended", message)
            self._seen, self._tokens = None, {}
            return
        self._seen, self._tokens = seen, tokens
        principals = len(set(tokens.values()))
        log.info("AUTH_TOKENS_FILE: %d token(s) of %d principal(s)", len(tokens), principals)

    def principal(self, token: str) -> str | None:
        """The principal ``token`` names, or None (reading the file again if it changed)."""
        digest = token_hash(token)
        with self._lock:
            self._load(strict=False)
            for known, name in self._tokens.items():
                if hmac.compare_digest(known, digest):
                    return name
        return None

    async def verify_token(self, token: str) -> AccessToken | None:
        name = self.principal(token)
        if name is None:
            return None
        return AccessToken(token=token, client_id=name, scopes=[], resource=self.resource)
