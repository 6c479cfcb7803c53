"""SandboxConfig: every setting of the server, read from the environment and ``.env``.

Each field's description is the documentation: README's settings table and
``sample.env`` are checked against this model by a test.
"""

import os
import re
from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from omcp_py.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
PYPI_SIMPLE = "https://pypi.org/simple/"


def parse_size(value: object) -> int:
    """Turn ``512m``, ``64k``, ``1g`` or a plain byte count into bytes.

    Args:
        value: an int (bytes) or a string with an optional k/m/g suffix.

    Returns:
        The size in bytes.

    Raises:
        ValueError: when the value is not a size.
    """
    if isinstance(value, bool):
        raise ValueError("must be a size such as 512m, 64k or 1g")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError("must be a size such as 512m, 64k or 1g")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def format_size(size: int) -> str:
    """Render bytes the way Docker and the settings table write them (``512m``)."""
    for unit, factor in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


Size = Annotated[int, BeforeValidator(parse_size)]


def _split_urls(value: str) -> list[str]:
    return [url for url in re.split(r"[\s,]+", value) if url]


def _http_url(value: str) -> None:
    if not re.match(r"^https?://[^\s]+$", value):
        raise ValueError("must be an http:// or https:// URL")


def _proxy_url(value: str) -> None:
    # The egress filter speaks plain HTTP to the proxy it chains to (CONNECT inside).
    if not re.match(r"^http://[^\s/]+/?$", value):
        raise ValueError("must be http://host:port (with user:pass@ if it needs them)")


def _host_ports(value: str) -> None:
    for entry in _split_urls(value):
        if not re.match(r"^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$", entry):
            raise ValueError(f"{entry!r} is not host:port")


def _http_urls(value: str) -> None:
    for url in _split_urls(value):
        if not re.match(r"^https?://\S+$", url):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")


def _absolute_dirs(value: str) -> None:
    for entry in value.split(":"):
        if entry and not entry.startswith("/"):
            raise ValueError(f"{entry!r} is not an absolute path")


def _module_names(value: str) -> None:
    for name in _split_urls("" if value.strip().lower() == "none" else value):
        if not re.match(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", name):
            raise ValueError(f"{name!r} is not a module name")


def _absolute(value: str) -> None:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path on the Docker host")


# The string settings with a form, and their checks.
_CHECKS = {
    "package_index_url": _http_url,
    "package_proxy": _proxy_url,
    "package_allowed_hosts": _host_ports,
    "sandbox_allowed_hosts": _host_ports,
    "package_extra_index_urls": _http_urls,
    "host_input_dirs": _absolute_dirs,
    "sandbox_preload": _module_names,
    "package_ca_bundle": _absolute,
    "package_wheelhouse": _absolute,
    "host_output_dir": _absolute,
}


class SandboxConfig(BaseSettings):
    """Settings of one omcp_py server process."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
        env_ignore_empty=True,  # `NAME=` in .env means "use the default"
    )

    sandbox_timeout: int = Field(
        300, ge=1, le=86400, description="Idle seconds before a sandbox expires and is reaped."
    )
    max_sandboxes: int = Field(
        10, ge=1, le=1000, description="Most sandboxes this server keeps at once."
    )
    docker_image: str = Field(
        "python:3.11-slim",
        min_length=1,
        description="Image the sandboxes run; it needs python3 on PATH and nothing else.",
    )
    sandbox_base_url: str | None = Field(
        None,
        description=(
            "Docker engine URL for the sandboxes (unix:///..., tcp://host:2376, ssh://user@host, "
            "npipe://...); "
            "with DOCKER_TLS_VERIFY and DOCKER_CERT_PATH as the docker CLI uses them; unset: "
            "DOCKER_HOST, then the current docker context, then the usual sockets."
        ),
    )
    debug: bool = Field(False, description="Log at DEBUG level, overriding LOG_LEVEL.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Level of the log written to stderr."
    )
    sandbox_memory: Size = Field(
        "512m", ge=64 * 1024**2, description="Memory of a sandbox (swap is set equal: none extra)."
    )
    sandbox_cpus: float = Field(0.5, gt=0, le=64, description="CPUs a sandbox may use.")
    sandbox_pids_limit: int = Field(
        128,
        ge=16,
        le=65536,
        description="Most processes and threads in a sandbox (stops fork bombs).",
    )
    sandbox_tmp_size: Size = Field("64m", ge=1024**2, description="Size of the /tmp tmpfs.")
    sandbox_workdir_size: Size = Field(
        "64m", ge=1024**2, description="Size of the /sandbox tmpfs, the working directory."
    )
    sandbox_home_size: Size = Field(
        "16m", ge=1024**2, description="Size of the HOME tmpfs (/home/sandbox)."
    )
    sandbox_shm_size: Size = Field("64m", ge=1024**2, description="Size of /dev/shm.")
    execution_timeout: int = Field(
        30, ge=1, le=86400, description="Default seconds an execution may run before it is killed."
    )
    max_execution_timeout: int = Field(
        600, ge=1, le=86400, description="Largest timeout a caller may ask for, in seconds."
    )
    output_limit: Size = Field(
        "1m",
        ge=1024,
        le=64 * 1024**2,
        description="Bytes kept of each of stdout and stderr (head and tail; the middle is cut).",
    )
    max_result_size: Size = Field(
        "1m",
        ge=128 * 1024,
        le=256 * 1024**2,
        description=(
            "Bytes one result of a run or a download may take as JSON-RPC (clients such as "
            "Claude Desktop refuse results over about 1 MiB): output past it is cut, head and "
            "tail kept; a file that does not fit is refused."
        ),
    )
    image_budget: Size = Field(
        "800k",
        ge=0,
        le=64 * 1024**2,
        description=(
            "Bytes, after base64, the figures of one result may take together (clients refuse "
            "results over about 1 MiB): larger ones are scaled down or sent as JPEG, and those "
            "that still do not fit are left out (0: no figures)."
        ),
    )
    max_upload_size: Size = Field(
        "10m", ge=1024, le=1024**3, description="Largest file upload_file accepts, in bytes."
    )
    max_download_size: Size = Field(
        "10m",
        ge=1024,
        le=1024**3,
        description="Largest file download_file reads, in bytes (its result must also fit "
        "MAX_RESULT_SIZE).",
    )
    max_code_size: Size = Field(
        "1m", ge=1024, le=64 * 1024**2, description="Largest code accepted, in UTF-8 bytes."
    )
    reaper_interval: int = Field(
        10, ge=1, le=3600, description="Seconds between sweeps for idle and orphaned sandboxes."
    )
    docker_timeout: int = Field(
        30, ge=1, le=600, description="Seconds to wait for one Docker API call."
    )

    sandbox_runtime: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description=(
            "Container runtime of the sandboxes, e.g. runsc for gVisor (its own kernel "
            "between the code and the host's); unset: the engine's default. Must be one the "
            "engine offers (docker info)."
        ),
    )
    sandbox_pool_size: int = Field(
        2,
        ge=0,
        le=100,
        description=(
            "Sandboxes kept ready so create_sandbox answers at once (0: none); they count "
            "against MAX_SANDBOXES."
        ),
    )
    max_install_timeout: int = Field(
        900, ge=1, le=86400, description="Largest timeout install_package accepts, in seconds."
    )
    package_index_url: str | None = Field(
        None,
        description="Package index the installer uses (pip --index-url); unset: PyPI.",
    )
    package_extra_index_urls: str | None = Field(
        None,
        description="More package indexes, separated by spaces or commas (pip --extra-index-url).",
    )
    package_proxy: str | None = Field(
        None,
        description=(
            "HTTP proxy (http://[user:pass@]host:port) the egress filter sends the "
            "installer's allowed connections through."
        ),
    )
    package_allowed_hosts: str | None = Field(
        None,
        description=(
            "More host:port pairs the installer may reach besides the indexes (e.g. where a "
            "private index keeps its files), separated by spaces or commas."
        ),
    )
    package_ca_bundle: str | None = Field(
        None,
        description=(
            "Absolute path, on the Docker host, of a CA bundle the installer trusts (needed "
            "behind TLS-intercepting proxies), e.g. /etc/ssl/certs/ca-certificates.crt."
        ),
    )
    package_wheelhouse: str | None = Field(
        None,
        description=(
            "Absolute path, on the Docker host, of a directory of wheels: installs use it alone, "
            "with no index and no network."
        ),
    )
    package_source_builds: bool = Field(
        True,
        description="Allow building packages from source when no wheel fits (wheels preferred).",
    )
    sandbox_allowed_hosts: str | None = Field(
        None,
        description=(
            "host:port pairs a sandbox may be given with create_sandbox(allow_hosts=...), "
            "through its own egress filter, separated by spaces or commas; unset: no sandbox "
            "ever has a network."
        ),
    )
    sandbox_preload: str = Field(
        "numpy,pandas,matplotlib.pyplot",
        description=(
            "Modules a zygote in each sandbox imports once, those the image has (none of "
            "them: no zygote); every run is forked from it and still starts fresh. Its "
            "memory (about 70 MiB for these three) is the sandbox's; none: no zygote."
        ),
    )
    host_input_dirs: str | None = Field(
        None,
        description=(
            "Directories of this machine (absolute, separated by ':') whose files "
            "import_host_file may copy into a sandbox; unset: no host file is ever read and "
            "the tool is not offered."
        ),
    )
    host_output_dir: str | None = Field(
        None,
        description=(
            "Directory of this machine (absolute) export_file writes sandbox files into, "
            "never overwriting; unset: nothing is ever written and the tool is not offered."
        ),
    )
    packages_disk_limit: Size = Field(
        "2g",
        ge=16 * 1024**2,
        description=(
            "Most bytes a sandbox's installed packages may take on the host's disk; an "
            "install past it is stopped and undone."
        ),
    )
    package_cache_size: Size = Field(
        "2g",
        ge=0,
        description=(
            "Most bytes the package cache may hold: files downloaded from the index, shared "
            "by the installs of every sandbox, kept only when the index's sha256 confirms "
            "them and checked again on each use; the least recently used go first. 0: no "
            "cache."
        ),
    )
    package_cache_volume: str = Field(
        "omcp-package-cache",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="Docker volume of the package cache (`omcp_py cache clear` removes it).",
    )
    installer_cpus: float = Field(
        2.0,
        gt=0,
        le=64,
        description=(
            "CPUs the installer container may use: pip unpacks, then it byte-compiles with a "
            "process per CPU."
        ),
    )
    auth_tokens_file: str | None = Field(
        None,
        description=(
            "For `omcp_py serve --http`: a file of bearer tokens, one 'name:sha256-of-token' "
            "a line (`omcp_py token new NAME` makes one), read again when it changes; each "
            "name is a principal who sees only the sandboxes it created."
        ),
    )
    max_sandboxes_per_principal: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Most sandboxes one principal may hold, within MAX_SANDBOXES.",
    )
    installer_network: str = Field(
        "bridge",
        min_length=1,
        description=(
            "Docker network the egress filter reaches the index on; the installer itself sits "
            "on an internal network behind the filter (sandboxes never get one)."
        ),
    )

    @field_validator(*_CHECKS)
    @classmethod
    def _checked(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            _CHECKS[info.field_name](value)
        return value

    @property
    def allowed_package_hosts(self) -> list[str]:
        """PACKAGE_ALLOWED_HOSTS as a list of host:port (host in lower case)."""
        return [entry.lower() for entry in _split_urls(self.package_allowed_hosts or "")]

    @property
    def preload_modules(self) -> list[str]:
        """SANDBOX_PRELOAD as a list (``none``: empty; an empty variable is unset)."""
        if self.sandbox_preload.strip().lower() == "none":
            return []
        return _split_urls(self.sandbox_preload)

    @property
    def host_input_dirs_list(self) -> list[str]:
        """HOST_INPUT_DIRS as a list, each without a trailing '/'."""
        dirs = [entry for entry in (self.host_input_dirs or "").split(":") if entry]
        return [entry.rstrip("/") or "/" for entry in dirs]

    @property
    def allowed_sandbox_hosts(self) -> list[str]:
        """SANDBOX_ALLOWED_HOSTS as a list of host:port (host in lower case)."""
        return [entry.lower() for entry in _split_urls(self.sandbox_allowed_hosts or "")]

    @property
    def extra_index_urls(self) -> list[str]:
        """PACKAGE_EXTRA_INDEX_URLS as a list."""
        return _split_urls(self.package_extra_index_urls or "")

    @model_validator(mode="after")
    def _consistent(self) -> "SandboxConfig":
        _check_together(self)
        return self

    @property
    def effective_log_level(self) -> str:
        """The log level after DEBUG is applied."""
        return "DEBUG" if self.debug else self.log_level


def index_urls(config: SandboxConfig) -> list[str]:
    """The indexes installs use: PACKAGE_INDEX_URL (PyPI when unset), then the extras."""
    return [config.package_index_url or PYPI_SIMPLE, *config.extra_index_urls]


def uses_package_cache(config: SandboxConfig) -> bool:
    """Installs share the package cache (not with a wheelhouse: nothing is fetched)."""
    return config.package_cache_size > 0 and not config.package_wheelhouse


def _check_together(config: "SandboxConfig") -> None:
    """Refuse settings that each pass but do not fit together."""
    # tmpfs pages are charged to the sandbox's memory cgroup: if the mounts could
    # hold more than half the memory, a full disk would look like an OOM kill.
    total = (
        config.sandbox_tmp_size
        + config.sandbox_workdir_size
        + config.sandbox_home_size
        + config.sandbox_shm_size
    )
    if total > config.sandbox_memory // 2:
        raise ValueError(
            f"SANDBOX_TMP_SIZE + SANDBOX_WORKDIR_SIZE + SANDBOX_HOME_SIZE + SANDBOX_SHM_SIZE "
            f"= {format_size(total)} must be at most half of "
            f"SANDBOX_MEMORY={format_size(config.sandbox_memory)}"
        )
    if config.package_wheelhouse and (
        config.package_index_url
        or config.package_extra_index_urls
        or config.package_proxy
        or config.package_allowed_hosts
    ):
        raise ValueError(
            "PACKAGE_WHEELHOUSE installs with no index and no network: unset "
            "PACKAGE_INDEX_URL, PACKAGE_EXTRA_INDEX_URLS, PACKAGE_PROXY and "
            "PACKAGE_ALLOWED_HOSTS, or the wheelhouse"
        )
    if config.image_budget > config.max_result_size - 64 * 1024:
        raise ValueError(
            f"IMAGE_BUDGET={format_size(config.image_budget)} must leave 64k of "
            f"MAX_RESULT_SIZE={format_size(config.max_result_size)} for the rest of a result"
        )
    if config.execution_timeout > config.max_execution_timeout:
        raise ValueError(
            f"EXECUTION_TIMEOUT={config.execution_timeout} must not exceed "
            f"MAX_EXECUTION_TIMEOUT={config.max_execution_timeout}"
        )


def load_config() -> SandboxConfig:
    """Read the settings from the environment and ``.env``.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: one line per invalid setting, naming the variable, the value
            and what is allowed.
    """
    try:
        return SandboxConfig()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    fields = SandboxConfig.model_fields
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        message = err["msg"].removeprefix("Value error, ")
        if name in fields:
            allowed = fields[name].description or ""
            lines.append(
                f"invalid setting {name.upper()}={err.get('input')!r}: {message} "
                f"({name.upper()}: {allowed})"
            )
        else:
            lines.append(f"invalid settings: {message}")
    return "\n".join(lines)


def empty_settings(env_file: str = ".env") -> list[tuple[str, str]]:
    """The settings given as empty strings, which mean "use the default".

    Returns:
        (variable, default as written) for each, from the environment or ``.env``, so
        that the server can say so at start: ``DOCKER_IMAGE=`` by mistake is not silent.
    """
    from dotenv import dotenv_values

    given = {name.lower(): value for name, value in dotenv_values(env_file).items()}
    given |= {name.lower(): value for name, value in os.environ.items()}
    defaults = {variable: default for variable, default, _ in documented_settings()}
    return [
        (variable, defaults[variable])
        for variable in defaults
        if given.get(variable.lower(), None) == ""
    ]


def documented_settings() -> list[tuple[str, str, str]]:
    """Every setting as the docs show it: (variable, default as written, description)."""
    rows = []
    for name, field in SandboxConfig.model_fields.items():
        default = field.default
        if default is None:
            text = "(unset)"
        elif isinstance(default, bool):
            text = str(default).lower()
        else:
            text = str(default)
        rows.append((name.upper(), text, field.description or ""))
    return rows
