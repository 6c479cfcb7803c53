"""What install_package accepts, what it asks pip, and how it explains pip's failures.

Pure functions (no Docker), so every rule can be unit-tested. The requirements a
caller sends are parsed as PEP 508 and reach pip as separate arguments after
``--``: never through a shell, never inside generated code.
"""

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from omcp_py.config import SandboxConfig
from omcp_py.errors import InvalidArgument
from omcp_py.hardening import WHEELHOUSE_DIR

MAX_REQUIREMENTS = 64
MAX_REQUIREMENT_LENGTH = 200

# Names, extras and version specifiers need nothing else. Quotes, ';', '@', '/',
# ':', '$', '`' and friends (markers, URLs, paths, shell and Python syntax) cannot
# get through, whatever the PEP 508 parser would accept.
_ALLOWED = re.compile(r"[A-Za-z0-9._\-\[\],<>=!~*+]")
_EXAMPLES = "e.g. 'pandas', 'numpy==2.1.0 requests' or 'httpx[http2]>=0.27'"
# Names pip reads as a file to install rather than a project to look up (its archive
# suffixes, and a Python file): refused like every other path.
_FILE_SUFFIXES = (
    ".whl",
    ".zip",
    ".tar",
    ".tar.gz",
    ".tgz",
    ".tar.bz2",
    ".tbz",
    ".tar.xz",
    ".txz",
    ".tar.lz",
    ".tlz",
    ".tar.lzma",
    ".py",
)


def parse_requirements(text: str) -> list[str]:
    """Split ``text`` on whitespace and check that each token is a plain requirement.

    Args:
        text: one or more PEP 508 requirement specifiers separated by spaces.

    Returns:
        The requirements, normalised by ``packaging`` (e.g. ``numpy==2.1.0``).

    Raises:
        InvalidArgument: naming the first token that is not a plain requirement
            (an option, URL, path, marker, shell or Python syntax), or when there
            are none or too many.
    """
    # Imported here: it is only needed by install_package (and costs 25 ms at start).
    from packaging.requirements import InvalidRequirement, Requirement

    tokens = text.split()
    if not tokens:
        raise InvalidArgument(f"package is empty: give one or more requirements, {_EXAMPLES}.")
    if len(tokens) > MAX_REQUIREMENTS:
        raise InvalidArgument(
            f"package holds {len(tokens):,} requirements; install at most {MAX_REQUIREMENTS} "
            f"per call (dependencies come along by themselves)."
        )
    requirements = []
    for token in tokens:
        shown = token if len(token) <= 80 else token[:80] + "..."
        if token.startswith("-"):
            raise InvalidArgument(
                f"{shown!r} is an installer option; only requirements are accepted ({_EXAMPLES}). "
                f"Package indexes are set by the server's PACKAGE_INDEX_URL."
            )
        if len(token) > MAX_REQUIREMENT_LENGTH:
            raise InvalidArgument(
                f"requirement {shown!r} is longer than {MAX_REQUIREMENT_LENGTH} characters."
            )
        bad = next((c for c in token if not _ALLOWED.fullmatch(c)), None)
        if bad is not None:
            raise InvalidArgument(
                f"{shown!r} is not a plain requirement: {bad!r} is not allowed (URLs, paths, "
                f"environment markers and quotes are refused). Give requirements, {_EXAMPLES}."
            )
        try:
            requirement = Requirement(token)
        except InvalidRequirement as exc:
            reason = str(exc).splitlines()[0]
            raise InvalidArgument(
                f"{shown!r} is not a valid requirement ({reason}); {_EXAMPLES}."
            ) from None
        if requirement.name.lower().endswith(_FILE_SUFFIXES):
            raise InvalidArgument(
                f"{shown!r} names a file, which the installer would install from a path, not "
                f"a package of the index: give the project's name ({_EXAMPLES}). Wheels of "
                f"your own go in the server's PACKAGE_WHEELHOUSE."
            )
        requirements.append(str(requirement))
    return requirements


PYPI_HOSTS = ["pypi.org:443", "files.pythonhosted.org:443"]


def host_port(url: str) -> str:
    """``host:port`` of an http(s) URL, the scheme's port when it names none."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = (parts.hostname or "").rstrip(".")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def allowed_hosts(config: SandboxConfig) -> list[str]:
    """``host:port`` the installer may reach through the egress filter: the indexes'
    (PyPI's and its file host's when none is set), then PACKAGE_ALLOWED_HOSTS."""
    found = [host_port(config.package_index_url)] if config.package_index_url else PYPI_HOSTS
    found = found + [host_port(url) for url in config.extra_index_urls]
    return list(dict.fromkeys(found + config.allowed_package_hosts))


def pip_arguments(
    config: SandboxConfig, requirements: list[str], proxy: str | None = None
) -> list[str]:
    """The arguments after ``pip install --target DIR`` for one install.

    Args:
        config: the server's package settings.
        requirements: from :func:`parse_requirements`.
        proxy: the egress filter's URL (PACKAGE_PROXY is chained behind it).

    Returns:
        Options first, then ``--`` and the requirements, one argument each.
    """
    args = [
        "--no-input",
        "--disable-pip-version-check",
        "--no-cache-dir",
        "--progress-bar=off",
        "--no-warn-script-location",
        # The installer's pip_driver.py compiles afterwards, on every CPU it has.
        "--no-compile",
        # pip's default (5 retries, 15 s each) turns an unreachable index into minutes.
        "--retries=2",
        "--timeout=20",
    ]
    if config.package_wheelhouse:
        args += ["--no-index", f"--find-links={WHEELHOUSE_DIR}"]
    else:
        if config.package_index_url:
            args.append(f"--index-url={config.package_index_url}")
        args += [f"--extra-index-url={url}" for url in config.extra_index_urls]
        # pip ignores a plain-http index unless its host is trusted; the operator who
        # configured one has made that choice already.
        for url in [config.package_index_url or "", *config.extra_index_urls]:
            if url.startswith("http://"):
                args.append(f"--trusted-host={urlsplit(url).netloc}")
        if proxy:
            args.append(f"--proxy={proxy}")
    args.append("--prefer-binary" if config.package_source_builds else "--only-binary=:all:")
    return [*args, "--", *requirements]


_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
_CONFLICT = re.compile(r"conflict is caused by:\n((?:[ \t]+\S.*\n)+)")


def explain_failure(log: str, config: SandboxConfig, egress: Sequence[str] = ()) -> str:
    """One or two sentences on why pip failed, from its log.

    Args:
        log: what the installer printed (pip's output).
        config: the package settings, to point at the one that matters.
        egress: the egress filter's refusals and failures of this installer.

    Returns:
        A short, specific message that says what to do next.
    """
    if "No module named pip" in log:
        return (
            f"The sandbox image {config.docker_image!r} has no pip: set DOCKER_IMAGE to an image "
            f"with pip (python:3.11-slim has it)."
        )
    if "CERTIFICATE_VERIFY_FAILED" in log or "SSLCertVerificationError" in log:
        return (
            f"TLS verification failed when reaching {_index(config)}: a proxy is intercepting "
            f"TLS. Set PACKAGE_CA_BUNDLE to the CA bundle that trusts it (e.g. "
            f"/etc/ssl/certs/ca-certificates.crt)."
        )
    refused = [line for line in egress if line.startswith("refuse ")]
    if refused or "Refused by the omcp_py egress filter" in log:
        said = _refusal(refused[-1]) if refused else "a host off the allow-list"
        return (
            f"The egress filter refused a connection of the installer to {said}. It may "
            f"reach only the package indexes: {', '.join(allowed_hosts(config))}. A package "
            f"whose build reaches elsewhere cannot be installed; a host that serves an "
            f"index's files goes in PACKAGE_ALLOWED_HOSTS."
        )
    failed = [line for line in egress if line.startswith("fail ")]
    if failed:
        return (
            f"The package index {_index(config)} could not be reached from the egress filter "
            f"(network {config.installer_network!r}): {failed[-1].split(': ', 1)[-1]}. Check "
            f"PACKAGE_INDEX_URL, PACKAGE_PROXY and the engine's network, or use "
            f"PACKAGE_WHEELHOUSE offline."
        )
    unreachable = (
        "Unreachable from the omcp_py egress filter",
        "Failed to establish a new connection",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Connection refused",
        "Network is unreachable",
        "ProxyError",
        "Read timed out",
        "ConnectTimeoutError",
    )
    if any(marker in log for marker in unreachable):
        return (
            f"The package index {_index(config)} could not be reached from the installer "
            f"(network {config.installer_network!r}). Check PACKAGE_INDEX_URL, PACKAGE_PROXY and "
            f"the engine's network, or use PACKAGE_WHEELHOUSE offline."
        )
    conflict = _CONFLICT.search(log)
    if "ResolutionImpossible" in log or conflict:
        detail = ""
        if conflict:
            lines = [line.strip() for line in conflict.group(1).splitlines() if line.strip()]
            detail = ": " + "; ".join(lines[:6])
        return (
            f"Version conflict: these requirements cannot be installed together{detail}. "
            f"Loosen or change the pinned versions."
        )
    missing = _NO_MATCH.search(log)
    if missing:
        name = missing.group(1)
        where = (
            "in the wheelhouse (PACKAGE_WHEELHOUSE)"
            if config.package_wheelhouse
            else f"on {_index(config)}"
        )
        hint = (
            " Source builds are off (PACKAGE_SOURCE_BUILDS=false), so only wheels count."
            if not config.package_source_builds
            else ""
        )
        return (
            f"No release matches {name} {where}: check the name and version, and that a "
            f"release exists for this Python and platform.{hint}"
        )
    if "No space left on device" in log:
        return "The Docker host ran out of disk space while installing."
    if any(m in log for m in ("subprocess-exited-with-error", "Failed building wheel")):
        return (
            "Building a package from source failed (the image may lack a compiler or headers): "
            "pin a version that has a wheel for this platform, or use an image with build tools."
        )
    errors = [line for line in log.splitlines() if line.startswith("ERROR:")]
    if errors:
        return errors[-1].removeprefix("ERROR:").strip()[:500]
    return "The installer failed; see output for pip's log."


def _refusal(line: str) -> str:
    """``host:port (why)`` of the filter's ``refuse METHOD HOST:PORT from PEER: WHY``."""
    words = line.split(" ", 3)
    why = line.partition(": ")[2].split(" (")[0]
    return f"{words[2]} ({why})" if len(words) > 2 and why else line[:200]


def _index(config: SandboxConfig) -> str:
    return config.package_index_url or "https://pypi.org/simple"
