"""The ``omcp_py`` command: the MCP server by default, and tools for the person setting it up.

MCP clients start ``omcp_py`` with no arguments: that serves MCP on stdio, and
nothing but the protocol is written to stdout. The other commands are for a terminal.
"""

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from omcp_py import __version__

DESCRIPTION = (
    "MCP server that gives an AI assistant isolated Python sandboxes in Docker. "
    "With no command it serves MCP over stdio: that is what an MCP client (Claude "
    "Desktop, the MCP Inspector) runs. Settings come from the environment and .env "
    "(see `sample.env`)."
)


def _parser() -> argparse.ArgumentParser:
    from omcp_py.images import RECOMMENDED_IMAGE

    parser = argparse.ArgumentParser(prog="omcp_py", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"omcp_py {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve MCP over stdio (the default), or over HTTP with --http",
        description="Serve MCP over stdio, or over streamable HTTP at http://HOST:PORT/mcp "
        "with --http (loopback only, unless AUTH_TOKENS_FILE is set).",
    )
    serve.add_argument("--http", action="store_true", help="serve streamable HTTP")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name clients use to reach the server (checked against the Host header; "
        "loopback names always pass); repeatable",
    )
    token = commands.add_parser(
        "token",
        help="make a bearer token for `serve --http`",
        description="Bearer tokens of AUTH_TOKENS_FILE, one 'name:sha256' a line.",
    )
    token_commands = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    new = token_commands.add_parser(
        "new",
        help="print a new token for NAME and add its line to AUTH_TOKENS_FILE",
        description="Print a new token for principal NAME (shown once: give it to that "
        "person's client) and append its hash to AUTH_TOKENS_FILE (or print the line).",
    )
    new.add_argument("name", help="the principal: letters, digits, '.', '_', '@', '-'")
    commands.add_parser(
        "doctor",
        help="check Python, the Docker engine, the image and a real sandbox; print the "
        "Claude Desktop config",
        description="Check, in order, everything the server needs, with a fix for each "
        "failure, then print the Claude Desktop config to paste. Exit code 0 only when "
        "every check passes.",
    )
    image = commands.add_parser(
        "image", help="build the recommended sandbox image", description="Sandbox images."
    )
    image_commands = image.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    build = image_commands.add_parser(
        "build",
        help=f"build {RECOMMENDED_IMAGE} (numpy, pandas, matplotlib)",
        description=f"Build {RECOMMENDED_IMAGE}: Python with numpy, pandas and matplotlib, "
        f"a non-root user 1000 and a HOME that works on a read-only root. Then set "
        f"DOCKER_IMAGE={RECOMMENDED_IMAGE}.",
    )
    build.add_argument("--tag", default=RECOMMENDED_IMAGE, help="image name (default: %(default)s)")
    build.add_argument("--base-image", help="Python image to build on (default: python:3.11-slim)")
    build.add_argument(
        "--ca-cert",
        type=Path,
        help="CA certificate (PEM) pip trusts during the build, for TLS-intercepting proxies",
    )
    cache = commands.add_parser(
        "cache",
        help="remove the package cache",
        description="The package cache: files downloaded from the index, shared by the "
        "installs of every sandbox (PACKAGE_CACHE_SIZE, PACKAGE_CACHE_VOLUME).",
    )
    cache_commands = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    cache_commands.add_parser(
        "clear",
        help="remove the cache volume (the next install fetches from the index again)",
        description="Remove PACKAGE_CACHE_VOLUME from the engine.",
    )
    bundle = commands.add_parser(
        "bundle",
        help="pack an MCP Bundle (.mcpb) for one-click install in Claude Desktop",
        description="From a checkout of omcp_py: write the bundle's manifest and pack it with "
        "the official MCP Bundle CLI (npx @anthropic-ai/mcpb; needs Node.js).",
    )
    bundle.add_argument(
        "--out", type=Path, default=Path("dist/omcp_py.mcpb"), help="default: %(default)s"
    )
    bundle.add_argument(
        "--checkout", type=Path, default=Path("."), help="the repository (default: here)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``omcp_py``, ``omcp-py``, ``python -m omcp_py``).

    Args:
        argv: the arguments (default: the command line).
    """
    args = _parser().parse_args(argv)
    if args.command == "serve" and args.http:
        from omcp_py.http_server import run_http

        run_http(args.host, args.port, args.allowed_host)
    elif args.command in (None, "serve"):
        from omcp_py.main import run_stdio

        run_stdio()
    elif args.command == "token":
        raise SystemExit(_to_terminal(_new_token, args.name))
    elif args.command == "doctor":
        from omcp_py.doctor import run_doctor

        raise SystemExit(_to_terminal(run_doctor))
    elif args.command == "bundle":
        from omcp_py.bundle import build

        args.out.parent.mkdir(parents=True, exist_ok=True)
        raise SystemExit(_to_terminal(build, args.checkout, args.out))
    elif args.command == "cache":
        raise SystemExit(_to_terminal(_clear_cache))
    elif args.command == "image":
        raise SystemExit(_to_terminal(_build_image, args.tag, args.base_image, args.ca_cert))


def _to_terminal(command: Callable[..., int], *args: object) -> int:
    # `omcp_py doctor | head` closes the pipe early: end quietly, as other tools do.
    try:
        return command(*args)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


def _build_image(tag: str, base_image: str | None, ca_cert: Path | None) -> int:
    from omcp_py.config import load_config
    from omcp_py.engine import Engine
    from omcp_py.errors import OmcpError
    from omcp_py.images import build_sandbox_image

    if ca_cert is not None and not ca_cert.is_file():
        print(f"omcp_py: --ca-cert {ca_cert}: no such file", file=sys.stderr)
        return 2
    try:
        config = load_config()
        engine = Engine(config.sandbox_base_url, timeout=max(config.docker_timeout, 600))
        with engine.errors():
            build_sandbox_image(engine.client(), tag, base_image, ca_cert)
    except OmcpError as exc:
        print(f"omcp_py: {exc}", file=sys.stderr)
        return 1
    print(f"built {tag}: set DOCKER_IMAGE={tag} to use it")
    return 0


def _clear_cache() -> int:
    import docker

    from omcp_py.config import load_config
    from omcp_py.engine import CONFLICT, MISSING, Engine, refusal
    from omcp_py.errors import OmcpError

    try:
        config = load_config()
        engine = Engine(config.sandbox_base_url, timeout=config.docker_timeout)
        with engine.errors():
            try:
                engine.client().api.remove_volume(config.package_cache_volume)
            except docker.errors.APIError as exc:
                if refusal(exc) == MISSING:
                    print(f"no package cache: volume {config.package_cache_volume} does not exist")
                    return 0
                if refusal(exc) != CONFLICT:
                    raise
                print(
                    f"omcp_py: volume {config.package_cache_volume} is in use by an install "
                    f"right now: run this again when it has finished",
                    file=sys.stderr,
                )
                return 1
    except OmcpError as exc:
        print(f"omcp_py: {exc}", file=sys.stderr)
        return 1
    print(f"removed the package cache (volume {config.package_cache_volume})")
    return 0


def _new_token(name: str) -> int:
    from omcp_py.auth import PRINCIPAL, new_token, token_hash
    from omcp_py.config import load_config
    from omcp_py.errors import OmcpError

    if not PRINCIPAL.fullmatch(name):
        print(f"omcp_py: {name!r} is not a principal name: {PRINCIPAL.pattern}", file=sys.stderr)
        return 2
    try:
        path = load_config().auth_tokens_file
    except OmcpError as exc:
        print(f"omcp_py: {exc}", file=sys.stderr)
        return 1
    token = new_token()
    line = f"{name}:{token_hash(token)}"
    if path:
        with open(path, "a", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(line + "\n")
        print(f"added {name} to {path}; the token (shown once):", file=sys.stderr)
    else:
        print(f"AUTH_TOKENS_FILE is not set: add this line to it: {line}", file=sys.stderr)
    print(token)
    return 0
