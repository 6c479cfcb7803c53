"""``omcp_py doctor``: check everything the server needs, in order, with a fix for each
failure, then print the Claude Desktop config that starts this very installation.

A new user's first run usually fails outside our code: the client cannot find the
command (Claude Desktop's PATH is not the shell's), the engine's socket is elsewhere,
the image is missing, a proxy breaks TLS. Each check says which, and what to do.
"""

import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from omcp_py import __version__
from omcp_py.config import SandboxConfig, load_config
from omcp_py.docker_host import DEFAULT_URL, candidates, transport
from omcp_py.errors import OmcpError

CLAUDE_CONFIG_FILES = {
    "macOS": "~/Library/Application Support/Claude/claude_desktop_config.json",
    "Windows": r"%APPDATA%\Claude\claude_desktop_config.json",
    "Linux": "~/.config/Claude/claude_desktop_config.json",
}


@dataclass
class Check:
    """The outcome of one check: passed (True), failed (False) or not run (None)."""

    passed: bool | None
    text: str
    fix: str = ""


class Doctor:
    """Runs the checks one after another; a failed check skips those that need it."""

    def __init__(self, out: Callable[[str], None] = print) -> None:
        self.out = out
        self.checks: list[Check] = []
        self.config: SandboxConfig | None = None
        self.client: Any = None
        self.engine_url: str | None = None
        self.engine_source: str | None = None
        self.image_present = False
        self.isolated = False

    def report(self, check: Check) -> Check:
        self.checks.append(check)
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[check.passed]
        self.out(f"[{mark}] {check.text}")
        if check.fix:
            self.out(f"       fix: {check.fix}")
        return check

    @property
    def passed(self) -> bool:
        # A skipped check (None) is not a failure: what it needs failed, or it does not apply.
        return all(check.passed is not False for check in self.checks)

    # -- the checks, in order ----------------------------------------------------------

    def python(self) -> Check:
        versions = ", ".join(
            f"{name} {_version(name)}" for name in ("omcp_py", "mcp", "docker", "pydantic")
        )
        # No check of the version itself: pip and uv refuse to install on Python < 3.10.
        python = ".".join(map(str, sys.version_info[:3]))
        return self.report(Check(True, f"Python {python} ({sys.executable}); {versions}"))

    def settings(self) -> Check:
        try:
            self.config = load_config()
        except OmcpError as exc:
            return self.report(
                Check(
                    False,
                    f"settings (environment and {Path.cwd() / '.env'}): {exc}",
                    "correct the setting named above; sample.env describes every setting",
                )
            )
        changed = sorted(_changed_settings(self.config))
        detail = f"{len(changed)} changed: {', '.join(changed)}" if changed else "all defaults"
        return self.report(Check(True, f"settings valid ({detail})"))

    def engine(self) -> Check:
        if self.config is None:
            return self.report(Check(None, "Docker engine (needs valid settings)"))
        from omcp_py.engine import Engine

        engine = Engine(self.config.sandbox_base_url, timeout=min(self.config.docker_timeout, 15))
        tried = candidates(self.config.sandbox_base_url)
        try:
            self.client = engine.client()
            with engine.errors():
                version = self.client.version()
        except OmcpError as exc:
            reason = getattr(exc, "reason", "") or str(exc)
            return self.report(
                Check(
                    False,
                    f"Docker engine at {engine.url} ({engine.where.source}): {reason}",
                    _engine_fix(tried, reason),
                )
            )
        self.engine_url, self.engine_source = engine.url, engine.where.source
        return self.report(
            Check(
                True,
                f"Docker engine {version.get('Version', '?')} (API {version.get('ApiVersion')}, "
                f"{version.get('Os')}/{version.get('Arch')}) answers at {engine.url} "
                f"({engine.where.source}), {transport(engine.where)}",
            )
        )

    def isolation(self) -> Check:
        if self.client is None or self.config is None:
            return self.report(Check(None, "limits and runtime (needs the engine)"))
        from omcp_py.hardening import missing_limits, runtime_problem

        try:
            info = self.client.info()
        except Exception as exc:  # the engine went away since it answered
            return self.report(Check(False, f"docker info failed: {exc}", "check the engine"))
        missing = missing_limits(info)
        if missing:
            return self.report(
                Check(
                    False,
                    f"the engine cannot enforce the {', '.join(missing)}",
                    "enable the cgroup controllers (see the warnings of `docker info`); "
                    "omcp_py runs no sandbox without its limits",
                )
            )
        problem = runtime_problem(info, self.config.sandbox_runtime)
        if problem:
            return self.report(
                Check(False, f"SANDBOX_RUNTIME={self.config.sandbox_runtime}", problem)
            )
        runtime = self.config.sandbox_runtime or f"the default, {info.get('DefaultRuntime')}"
        self.isolated = True
        return self.report(
            Check(
                True,
                f"the engine enforces memory, CPU and process limits (cgroup "
                f"v{info.get('CgroupVersion', '?')}); runtime: {runtime}",
            )
        )

    def escapes(self) -> None:
        """Known container-escape bugs of the engine's components: warnings, not
        failures (a distribution may have backported the fix)."""
        if self.client is None:
            return
        from omcp_py.escapes import warnings

        try:
            answer = self.client.version()
        except Exception:  # the engine went away: the next checks say so
            return
        for text in warnings(answer):
            self.out(f"[warn] {text}")

    def image(self) -> Check:
        if self.client is None or self.config is None:
            return self.report(Check(None, "sandbox image (needs the engine)"))
        import docker

        from omcp_py.images import fix_for_missing

        image = self.config.docker_image
        try:
            found = self.client.api.inspect_image(image)
        except docker.errors.APIError as exc:
            if not isinstance(exc, docker.errors.ImageNotFound):
                return self.report(
                    Check(
                        False,
                        f"DOCKER_IMAGE {image}: {exc.explanation or exc}",
                        "set DOCKER_IMAGE to an image reference such as python:3.11-slim",
                    )
                )
            return self.report(
                Check(
                    False,
                    f"DOCKER_IMAGE {image} is not on the engine (the server would pull it at "
                    f"the first create_sandbox)",
                    fix_for_missing(image),
                )
            )
        self.image_present = True
        size = found.get("Size", 0) / 1e6
        return self.report(Check(True, f"DOCKER_IMAGE {image} is present ({size:.0f} MB)"))

    def host_paths(self) -> Check | None:
        """PACKAGE_CA_BUNDLE and PACKAGE_WHEELHOUSE are bind-mounted: paths on the
        engine's host, which is another machine when the engine is remote."""
        if self.config is None or not (
            self.config.package_ca_bundle or self.config.package_wheelhouse
        ):
            return None
        ready = self.client is not None and self.image_present
        client = self.client if ready else None
        return self.report(host_paths_check(self.config, client, self.engine_url))

    def index(self) -> Check:
        """The installer's reach to the package index: behind a TLS-intercepting proxy
        every install fails until PACKAGE_CA_BUNDLE names the CA the machine trusts."""
        config = self.config
        if config is None or self.client is None or not self.image_present:
            return self.report(Check(None, "the package index (needs the engine and the image)"))
        if config.package_wheelhouse:
            return self.report(
                Check(None, f"the package index (installs come from {config.package_wheelhouse})")
            )
        from omcp_py.egress import EgressFilter
        from omcp_py.installer import Installer
        from omcp_py.ownership import ROLE, Owner

        url = config.package_index_url or "https://pypi.org/simple/"
        owner = Owner.current()
        egress = EgressFilter(lambda: self.client, config, owner)
        try:
            answer = Installer(self.client, config).reach_index(
                owner.labels() | {ROLE: "installer"},
                url,
                network=egress.network,
                proxy=egress.proxy(),
            )
        except Exception as exc:  # the engine refused a container
            return self.report(
                Check(
                    False,
                    f"the package index {url}: the installer did not run: {exc}",
                    "the installer runs DOCKER_IMAGE's python3: check the image and the engine",
                )
            )
        finally:
            egress.close()
        kind, _, why = answer.partition(" ")
        via = f"INSTALLER_NETWORK={config.installer_network}, through the egress filter"
        if kind == "ok":
            return self.report(
                Check(True, f"the installer reaches the package index {url} ({via})")
            )
        if kind == "tls":
            bundle = config.package_ca_bundle
            fix = (
                f"PACKAGE_CA_BUNDLE={bundle} does not verify it: name the bundle that holds "
                f"the CA of the proxy or index"
                if bundle
                else "a TLS-intercepting proxy or a private CA is in the way: set "
                "PACKAGE_CA_BUNDLE to the CA bundle this machine trusts (on Debian and "
                "Ubuntu /etc/ssl/certs/ca-certificates.crt)"
            )
            return self.report(
                Check(False, f"the installer cannot verify the certificate of {url}: {why}", fix)
            )
        return self.report(
            Check(
                False,
                f"the installer cannot reach the package index {url} ({via}): {why}",
                "check the machine's network and INSTALLER_NETWORK, or set PACKAGE_PROXY or "
                "PACKAGE_INDEX_URL; with no network at all, install from PACKAGE_WHEELHOUSE",
            )
        )

    def sandbox(self) -> Check:
        if self.config is None or self.client is None or not self.image_present:
            return self.report(Check(None, "a real sandbox (needs the engine and the image)"))
        if not self.isolated:
            return self.report(Check(None, "a real sandbox (needs the limits and the runtime)"))
        import anyio

        started = time.monotonic()
        try:
            output = anyio.run(_print_one, self.config)
        except Exception as exc:  # the manager's task group wraps what failed in a group
            cause = _first_cause(exc)
            if isinstance(cause, OmcpError):
                text = str(cause)
                return self.report(Check(False, f"a hardened sandbox: {text}", _sandbox_fix(text)))
            return self.report(
                Check(
                    False,
                    f"a hardened sandbox: {type(cause).__name__}: {cause}",
                    "run `DEBUG=true omcp_py doctor` for the details, and report it if it persists",
                )
            )
        took = time.monotonic() - started
        if output != "1\n":
            return self.report(
                Check(
                    False,
                    f"a hardened sandbox ran print(1) but printed {output!r}",
                    "DOCKER_IMAGE must have python3 on PATH; try python:3.11-slim",
                )
            )
        return self.report(
            Check(
                True,
                f"a hardened sandbox started, ran print(1) and was removed in {took:.1f} s",
            )
        )

    def claude_config(self) -> None:
        command, args = launch_command()
        entry: dict[str, Any] = {"command": command, "args": args}
        env = client_env(self.config, self.engine_url, self.engine_source)
        if env:
            entry["env"] = env
        self.out("")
        self.out("Claude Desktop: add this to claude_desktop_config.json")
        for system, path in CLAUDE_CONFIG_FILES.items():
            self.out(f"  ({system}: {path})")
        self.out("then quit and reopen Claude Desktop:")
        self.out(json.dumps({"mcpServers": {"omcp_py": entry}}, indent=2))
        for line in other_clients(command, args, entry.get("env", {})):
            self.out(line)


def client_env(
    config: SandboxConfig | None, engine_url: str | None, engine_source: str | None
) -> dict[str, str]:
    """What the client must pass: it starts the server with a bare environment in
    another directory, so neither the shell's variables nor ``./.env`` reach it."""
    env: dict[str, str] = {}
    found_elsewhere = engine_url and engine_url != DEFAULT_URL
    context = (engine_source or "").startswith("docker context")
    if context and os.environ.get("DOCKER_CONTEXT"):
        # The context carries its TLS material: name it, not only its address.
        env["DOCKER_CONTEXT"] = os.environ["DOCKER_CONTEXT"]
        if os.environ.get("DOCKER_CONFIG"):
            env["DOCKER_CONFIG"] = os.environ["DOCKER_CONFIG"]
    elif found_elsewhere and engine_source != "SANDBOX_BASE_URL":
        env["DOCKER_HOST"] = str(engine_url)
    for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        if os.environ.get(name) and ("DOCKER_HOST" in env or engine_source == "SANDBOX_BASE_URL"):
            env[name] = os.environ[name]
    if config is not None:
        env.update(_changed_settings(config))
    return env


def other_clients(command: str, args: list[str], env: dict[str, str]) -> list[str]:
    """The same server for Claude Code (a command line), VS Code and Cursor (JSON)."""
    # The name before the options: --env takes several values, and would take the
    # name for one of them if it came after.
    claude = ["claude", "mcp", "add", "omcp_py", "--scope", "user", "--transport", "stdio"]
    for name, value in env.items():
        claude += ["--env", f"{name}={value}"]
    claude += ["--", command, *args]
    vscode = {"servers": {"omcp_py": {"type": "stdio", "command": command, "args": args}}}
    cursor = {"mcpServers": {"omcp_py": {"command": command, "args": args}}}
    if env:
        vscode["servers"]["omcp_py"]["env"] = env
        cursor["mcpServers"]["omcp_py"]["env"] = env
    return [
        "",
        "Claude Code: run",
        shlex.join(claude),
        "",
        "VS Code: add this to .vscode/mcp.json in a workspace (or to your user mcp.json):",
        json.dumps(vscode, indent=2),
        "",
        "Cursor: add this to ~/.cursor/mcp.json (or .cursor/mcp.json in a project):",
        json.dumps(cursor, indent=2),
    ]


def run_doctor(out: Callable[[str], None] = print) -> int:
    """Run every check, print the Claude Desktop config; 0 only when all checks pass."""
    doctor = Doctor(out)
    out(f"omcp_py {__version__} doctor")
    doctor.python()
    doctor.settings()
    doctor.engine()
    doctor.isolation()
    doctor.escapes()
    doctor.image()
    doctor.host_paths()
    doctor.index()
    doctor.sandbox()
    doctor.claude_config()
    if doctor.passed:
        out("\nAll checks passed.")
        return 0
    failed = sum(check.passed is False for check in doctor.checks)
    out(f"\n{failed} check(s) failed: fix them in order, then run `omcp_py doctor` again.")
    return 1


def host_paths_check(config: SandboxConfig, client: Any, engine_url: str | None) -> Check:
    """Where installers see PACKAGE_CA_BUNDLE and PACKAGE_WHEELHOUSE: a container on
    the engine at ``engine_url`` (``client``; None while it or the image is missing)."""
    named = [
        f"{name}={value}"
        for name, value in (
            ("PACKAGE_CA_BUNDLE", config.package_ca_bundle),
            ("PACKAGE_WHEELHOUSE", config.package_wheelhouse),
        )
        if value
    ]
    where = f"on the engine's host ({engine_url})"
    if client is None:
        return Check(None, f"{', '.join(named)} {where} (needs the engine and the image)")
    from omcp_py.installer import Installer
    from omcp_py.ownership import ROLE, Owner

    fix = (
        "these are paths on the machine that runs the Docker engine, read by its "
        "containers (uid 1000): put the file or directory there, readable by all"
    )
    try:
        seen = Installer(client, config).look_at_host_paths(
            Owner.current().labels() | {ROLE: "installer"}
        )
    except Exception as exc:  # the engine refused the mount: the path is not there
        reason = str(getattr(exc, "explanation", None) or exc)[:300]
        return Check(False, f"{', '.join(named)} {where}: {reason}", fix)
    if len(seen) != len(named):
        seen = ["bad the check printed nothing"] * len(named)
    pairs = zip(named, seen, strict=True)
    found = [f"{name} ({line.partition(' ')[2]})" for name, line in pairs]
    if any(line.startswith("bad") for line in seen):
        return Check(False, f"{where}: {'; '.join(found)}", fix)
    return Check(True, f"{', '.join(found)} readable {where}")


def _first_cause(exc: BaseException) -> BaseException:
    """The first failure inside (nested) exception groups."""
    while isinstance(getattr(exc, "exceptions", None), tuple) and exc.exceptions:  # type: ignore[attr-defined]
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc


async def _print_one(config: SandboxConfig) -> str:
    from omcp_py.sandbox_manager import SandboxManager

    manager = SandboxManager(config.model_copy(update={"sandbox_pool_size": 0}))
    async with manager.running():
        created = await manager.create(60)
        try:
            result = (await manager.execute(created.sandbox_id, "print(1)", 30)).result
        finally:
            await manager.remove(created.sandbox_id, force=True)
    return result.output


def launch_command() -> tuple[str, list[str]]:
    """The command, with absolute paths, that starts this installation's server.

    Returns:
        (command, args): uvx when this runs from uvx's cache, else the console script,
        else this Python with ``-m omcp_py``.
    """
    prefix = Path(sys.prefix)
    if "archive-v" in prefix.as_posix():  # uvx's throwaway environments live there
        uv = os.environ.get("UV")
        uvx = shutil.which("uvx") or (
            str(Path(uv).with_name("uvx" + Path(uv).suffix)) if uv else None
        )
        if uvx:
            return str(Path(uvx).absolute()), ["omcp_py"]
    script = Path(sys.argv[0])
    if script.stem in ("omcp_py", "omcp-py") and script.exists():
        return str(script.absolute()), []
    return str(Path(sys.executable).absolute()), ["-m", "omcp_py"]


def _changed_settings(config: SandboxConfig) -> dict[str, str]:
    """The settings the environment or ``.env`` gave, spelt as the environment spells them."""
    from omcp_py.config import format_size, parse_size

    changed = {}
    for name in sorted(config.model_fields_set):
        value = getattr(config, name)
        default = SandboxConfig.model_fields[name].default
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, int) and isinstance(default, str):  # a size: 512m, not bytes
            text = format_size(value)
            if value == parse_size(default):
                continue
        else:
            text = str(value)
        if value != default:
            changed[name.upper()] = text
    return changed


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _engine_fix(tried: list[Any], error: str) -> str:
    if "permission denied" in error:
        return (
            "add your user to the engine socket's group (`sudo usermod -aG docker $USER`, "
            "then log in again), or use rootless Docker"
        )
    if tried[0].source in ("DOCKER_HOST", "SANDBOX_BASE_URL"):
        return (
            f"{tried[0].source}={tried[0].url} does not answer: start the engine it names, "
            f"correct it, or unset it so that omcp_py looks for a local engine"
        )
    places = ", ".join(c.url.removeprefix("unix://") for c in tried)
    return (
        f"start the engine (Docker Desktop; `colima start`; OrbStack; `sudo systemctl start "
        f"docker`; rootless: `systemctl --user start docker`; `podman machine start`), or set "
        f"DOCKER_HOST to its socket. Looked at: {places}"
    )


def _sandbox_fix(error: str) -> str:
    if "python3" in error:
        return "DOCKER_IMAGE must have python3 on PATH; try python:3.11-slim"
    return "read the message above; `docker info` shows the engine's own warnings"
