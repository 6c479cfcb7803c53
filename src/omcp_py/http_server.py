"""``omcp_py serve --http``: the same server over streamable HTTP, for several callers.

Bound to loopback by default. Any other address needs AUTH_TOKENS_FILE, or the
server refuses to start: sandboxes run code, and an open port would run anyone's.
With tokens, the ``mcp`` SDK's bearer middleware answers 401 (with
``WWW-Authenticate``) to a request without a valid one, and serves the protected
resource metadata at ``/.well-known/oauth-protected-resource``; each token names a
principal, who sees only the sandboxes it created (``principals``). The Host and
Origin headers are checked (DNS rebinding) and request bodies bounded.
"""

import contextlib
import functools
import ipaddress
import sys
import threading

import anyio

from omcp_py.config import SandboxConfig, load_config
from omcp_py.errors import ConfigError

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for a loopback address or ``localhost``."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_problem(host: str, config: SandboxConfig) -> str | None:
    """Why the server must not serve on ``host``, or None."""
    if is_loopback(host) or config.auth_tokens_file:
        return None
    return (
        f"refusing to serve on {host}: only loopback (127.0.0.1, the default) may be served "
        f"without authentication. Set AUTH_TOKENS_FILE (make tokens with `omcp_py token new "
        f"NAME`), or serve on 127.0.0.1."
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def allowed(host: str, names: list[str]) -> tuple[list[str], list[str]]:
    """(Host headers, Origin headers) the server answers: loopback's, the bound
    address's (unless it is a wildcard) and ``names`` (how clients reach it), on any
    port (a container's port is often published as another)."""
    hosts = ["127.0.0.1", "localhost", "[::1]", *names]
    if host not in ("0.0.0.0", "::", ""):
        hosts.append(_url_host(host))
    hosts = list(dict.fromkeys(hosts))
    patterns = [*hosts, *(f"{h}:*" for h in hosts)]
    origins = [f"{scheme}://{p}" for p in patterns for scheme in ("http", "https")]
    return patterns, origins


def max_body(config: SandboxConfig) -> int:
    """The largest request body: an upload of MAX_UPLOAD_SIZE as base64, and room."""
    return max(config.max_upload_size, config.max_code_size) * 4 // 3 + 1024 * 1024


def run_http(host: str, port: int, names: list[str]) -> None:
    """Serve MCP over streamable HTTP at ``http://host:port/mcp`` until SIGINT/SIGTERM.

    Args:
        host: the address to bind (loopback unless AUTH_TOKENS_FILE is set).
        port: the TCP port.
        names: more host names clients use to reach the server (Host header check).
    """
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.transport_security import TransportSecuritySettings

    from omcp_py.auth import TokenFileVerifier
    from omcp_py.main import configure_logging, create_server

    try:
        config = load_config()
        problem = bind_problem(host, config)
        if problem:
            raise ConfigError(problem)
        url = f"http://{_url_host(host if host not in ('0.0.0.0', '::') else '127.0.0.1')}:{port}"
        verifier = auth = None
        if config.auth_tokens_file:
            verifier = TokenFileVerifier(config.auth_tokens_file, resource=f"{url}/mcp")
            auth = AuthSettings(
                issuer_url=url,  # tokens are made by the operator (`omcp_py token new`)
                resource_server_url=f"{url}/mcp",
                validate_token_resource=False,  # the verifier issues for this server only
            )
    except ConfigError as exc:
        print(f"omcp_py: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(config.effective_log_level)
    hosts, origins = allowed(host, names)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )
    server = create_server(config, threading.Event(), auth=auth, token_verifier=verifier)
    serve = functools.partial(
        server.run_streamable_http_async,
        host=host,
        port=port,
        transport_security=security,
        max_request_body_size=max_body(config),
    )
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(serve)
