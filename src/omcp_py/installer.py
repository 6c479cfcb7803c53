"""Host side of install_package: pip in a short-lived installer container.

The installer is a separate container (networked, hardened like a sandbox, never
running the user's code) that writes into the sandbox's package volume; the
sandbox, which never has a network, sees the files at once through its read-only
mount of that volume.

Blocking (Docker calls): call it from a worker thread.
"""

import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omcp_py.cancel import Stop
from omcp_py.config import SandboxConfig
from omcp_py.egress import EgressFilter
from omcp_py.engine import CONFLICT, MISSING, create_container, read_timed_out, refusal
from omcp_py.errors import EngineError
from omcp_py.hardening import (
    cache_keeper_kwargs,
    cache_owner_kwargs,
    host_paths_probe_kwargs,
    index_probe_kwargs,
    installer_run_kwargs,
    volume_owner_kwargs,
)
from omcp_py.packages import pip_arguments
from omcp_py.runner.sandbox_install import MARKER, USED_REPORTED

log = logging.getLogger(__name__)

# The script in the container caps pip's log at about 64 KiB; this bounds what we
# read even if something else writes to its stdout.
_LOG_CAP = 256 * 1024
# Clients that extend their deadline on progress need some well within 5 seconds.
PROGRESS_INTERVAL = 2.0


@dataclass
class RawInstall:
    """What one installer run produced, before it becomes a tool result."""

    exit_code: int
    log: str
    installed: list[str] = field(default_factory=list)
    timed_out: bool = False
    oom_killed: bool = False
    vanished: bool = False  # the installer container was removed under us
    cancelled: bool = False  # the caller cancelled: the installer was killed
    duration_ms: float = 0.0
    prepared: bool = False  # the volume belongs to the sandbox user now
    egress: list[str] = field(default_factory=list)  # the filter's refusals of it
    disk_exceeded: int = 0  # bytes on the volume when PACKAGES_DISK_LIMIT stopped it


class _CacheState:
    """What this server process knows of the package cache between installs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.prepared = False  # the volume was given to the keeper's user
        # Entries installs took since the keeper last ran: it orders eviction by them
        # (installers cannot write the cache, so they cannot mark a use themselves).
        self.used: set[str] = set()

    def note_used(self, digests: object) -> None:
        if not isinstance(digests, list):
            return
        with self.lock:
            for digest in digests:
                fits = len(self.used) < USED_REPORTED
                if fits and isinstance(digest, str) and _SHA256.fullmatch(digest):
                    self.used.add(digest)


_SHA256 = re.compile(r"[0-9a-f]{64}")
_CACHE = _CacheState()


class Installer:
    """Runs installer containers for the sandboxes of one server."""

    def __init__(self, client: Any, config: SandboxConfig) -> None:
        """Args:
        client: a connected ``docker.DockerClient``.
        config: the server's settings.
        """
        self.client = client
        self.config = config

    def install(
        self,
        volume: str,
        *,
        labels: dict[str, str],
        requirements: list[str],
        egress: EgressFilter | None,
        timeout: float,
        prepare: bool,
        wanted: Callable[[], bool] = lambda: True,
        progress: Callable[[float], None] | None = None,
        stop: Stop | None = None,
    ) -> RawInstall:
        """Run pip once against ``volume``; stop it (and all its processes) at ``timeout``.

        Args:
            volume: the sandbox's package volume.
            labels: ownership labels for the installer container.
            requirements: from :func:`omcp_py.packages.parse_requirements`.
            egress: the filter the installer reaches the index through (None: no
                network, with a wheelhouse).
            timeout: seconds the whole install may take.
            prepare: first install of this volume: hand it to the sandbox user first.
            wanted: False once the sandbox has been removed: stop at the next step.
            progress: told the seconds elapsed, every couple of seconds.
            stop: when it is stopped, the installer container is killed at once.

        Returns:
            The outcome; a failing pip is a normal outcome.

        Raises:
            EngineError: the volume could not be prepared.
        """
        started = time.monotonic()
        stop = stop or Stop()

        def report() -> None:
            if progress is not None:
                progress(time.monotonic() - started)

        if prepare:
            kwargs = volume_owner_kwargs(self.config, labels, volume)
            code, output, state = self._run_to_end(kwargs, timeout, wanted, report, stop)
            if state.get("timed_out") or state.get("vanished") or state.get("cancelled"):
                return RawInstall(
                    exit_code=code,
                    log=output,
                    timed_out=bool(state.get("timed_out")),
                    vanished=bool(state.get("vanished")),
                    cancelled=bool(state.get("cancelled")),
                    duration_ms=round((time.monotonic() - started) * 1000, 3),
                )
            if code != 0:
                raise EngineError(
                    f"Preparing the sandbox's package volume failed (exit {code}): "
                    f"{output.strip()[-300:]}. DOCKER_IMAGE must have python3 on PATH."
                )
        remaining = max(1.0, timeout - (time.monotonic() - started))
        proxy = egress.proxy() if egress else None
        pip_args = pip_arguments(self.config, requirements, proxy)
        network = egress.network if egress else None
        kwargs = installer_run_kwargs(self.config, labels, volume, pip_args, network=network)
        code, output, state = self._run_to_end(kwargs, remaining, wanted, report, stop)
        log_text, installed, disk_exceeded, cache = output, [], 0, {}
        if MARKER in output:
            log_text, _, trailer = output.rpartition(MARKER)
            try:
                result = json.loads(trailer)
                installed = [str(item) for item in result["installed"]]
                code = int(result["exit_code"])
                disk_exceeded = max(0, int(result.get("disk_exceeded") or 0))
                cache = {str(k): int(v) for k, v in (result.get("cache") or {}).items()}
                _CACHE.note_used(result.get("cache_used"))
            except (ValueError, KeyError, TypeError, AttributeError):
                log_text = output
        address = str(state.get("address") or "")
        if egress and cache.get("new") and not disk_exceeded:
            remaining = max(1.0, timeout - (time.monotonic() - started))
            said = self._keep(volume, labels, egress, remaining, report, stop)
            log_text = log_text.rstrip("\n") + "\n" + said
        return RawInstall(
            exit_code=code,
            log=log_text.strip("\n"),
            egress=egress.refusals(address) if egress and code != 0 else [],
            disk_exceeded=disk_exceeded,
            installed=installed,
            timed_out=bool(state.get("timed_out")),
            oom_killed=bool(state.get("oom_killed")),
            vanished=bool(state.get("vanished")),
            cancelled=bool(state.get("cancelled")),
            duration_ms=round((time.monotonic() - started) * 1000, 3),
            prepared=True,
        )

    def _keep(
        self,
        volume: str,
        labels: dict[str, str],
        egress: EgressFilter,
        timeout: float,
        report: Callable[[], None],
        stop: Stop,
    ) -> str:
        """Run the cache keeper on what the install staged; a line for the log.

        The install has succeeded or failed by now: a keeper that fails costs only the
        cache's chance to hold these files.
        """
        if not _CACHE.prepared:
            code, output, _ = self._run_to_end(
                cache_owner_kwargs(self.config, labels), timeout, lambda: True, report, stop
            )
            if code != 0:
                return f"omcp_py package cache: not prepared (exit {code}): {output[-200:]}"
            _CACHE.prepared = True
        with _CACHE.lock:
            used = sorted(_CACHE.used)
        kwargs = cache_keeper_kwargs(
            self.config, labels, volume, network=egress.network, proxy=egress.proxy(), used=used
        )
        code, output, _ = self._run_to_end(kwargs, timeout, lambda: True, report, stop)
        try:
            said = json.loads(output.strip().splitlines()[-1])
            stored, refused = int(said["stored"]), [str(r)[:300] for r in said["refused"]][:20]
        except (ValueError, KeyError, TypeError, IndexError):
            log.warning("the package cache's keeper failed (exit %s): %s", code, output[-500:])
            _CACHE.prepared = False  # e.g. the volume was removed: give it again
            return f"omcp_py package cache: nothing stored (the keeper failed, exit {code})"
        with _CACHE.lock:
            _CACHE.used.difference_update(used)
        line = f"omcp_py package cache: stored {stored} file(s)"
        if refused:
            line += "; refused " + "; ".join(refused)
        return line

    def reach_index(
        self,
        labels: dict[str, str],
        url: str,
        *,
        network: str,
        proxy: str,
        timeout: float = 40.0,
    ) -> str:
        """Fetch ``url`` from a container made like an installer, through the egress
        filter at ``proxy`` on ``network`` (``omcp_py doctor``).

        Returns:
            ``ok``, or ``tls <why>`` (the certificate could not be verified) or
            ``net <why>`` (no connection), or ``failed <what happened>``.
        """
        kwargs = index_probe_kwargs(self.config, labels, url, network=network, proxy=proxy)
        code, output, state = self._run_to_end(kwargs, timeout, lambda: True, lambda: None, Stop())
        last = (output.strip().splitlines() or [""])[-1]
        if state.get("timed_out"):
            return f"net no answer within {timeout:.0f} s"
        if code == 0 and last.split(" ", 1)[0] in ("ok", "tls", "net"):
            return last
        return f"failed (exit {code}) {last[:300]}"

    def look_at_host_paths(self, labels: dict[str, str], timeout: float = 40.0) -> list[str]:
        """What an installer sees at PACKAGE_CA_BUNDLE and PACKAGE_WHEELHOUSE (in that
        order, those set): ``ok <what>`` or ``bad <why>`` each (``omcp_py doctor``).

        Raises:
            docker.errors.APIError: the engine refused, e.g. a path it does not have.
        """
        kwargs = host_paths_probe_kwargs(self.config, labels)
        code, output, state = self._run_to_end(kwargs, timeout, lambda: True, lambda: None, Stop())
        lines = [line for line in output.splitlines() if line.startswith(("ok ", "bad "))]
        if code != 0 or state.get("timed_out"):
            return [f"bad the check did not finish (exit {code})"]
        return [line[:300] for line in lines]

    def _run_to_end(
        self,
        kwargs: dict[str, Any],
        timeout: float,
        wanted: Callable[[], bool],
        report: Callable[[], None],
        stop: Stop,
    ) -> tuple[int, str, dict]:
        """Create, start and wait for a container; always remove it.

        Returns:
            (exit code, its output, {"timed_out", "oom_killed", "vanished", "cancelled",
            "address"}).
        """
        import docker
        import requests

        api = self.client.api
        name = f"omcp-install-{uuid.uuid4().hex[:12]}"
        container = create_container(self.client, name=name, **kwargs)
        state: dict[str, Any] = {}
        code = -1
        output = ""
        try:
            if stop.stopped:
                state["cancelled"] = True
                return code, output, state
            if not wanted():
                # The sandbox was removed while this container was being made: its
                # removal may not have seen it, so it goes here (with the volume it
                # may have brought back, see the caller).
                state["vanished"] = True
                return code, output, state
            container.start()
            network = kwargs.get("network_mode")
            if network:
                # Who it is on the egress network: the filter's log names it so.
                with contextlib.suppress(docker.errors.APIError, KeyError, TypeError):
                    found = api.inspect_container(container.id)["NetworkSettings"]["Networks"]
                    state["address"] = found[network]["IPAddress"]

            def kill() -> None:
                state["cancelled"] = True
                with contextlib.suppress(docker.errors.APIError, requests.RequestException):
                    api.kill(container.id)

            stop.on_stop(kill)
            deadline = time.monotonic() + timeout
            status = None
            while status is None and time.monotonic() < deadline:
                # Short waits, so progress goes out between them.
                step = min(PROGRESS_INTERVAL, deadline - time.monotonic())
                try:
                    status = int(api.wait(container.id, timeout=max(step, 0.01))["StatusCode"])
                except requests.exceptions.RequestException as exc:
                    if not read_timed_out(exc):
                        raise
                    report()
            if status is None:
                state["timed_out"] = True
                with contextlib.suppress(docker.errors.APIError):
                    api.kill(container.id)
                status = 137
            code = status
            try:
                raw = api.logs(container.id, stdout=True, stderr=True)
                output = raw[-_LOG_CAP:].decode("utf-8", errors="replace")
                inspected = api.inspect_container(container.id)
                state["oom_killed"] = bool((inspected.get("State") or {}).get("OOMKilled"))
            except docker.errors.APIError as exc:
                # Gone, or "marked for removal": remove_sandbox took it meanwhile.
                if refusal(exc) not in (MISSING, CONFLICT):
                    raise
                state["vanished"] = True
        except docker.errors.NotFound:
            state["vanished"] = True
        finally:
            with contextlib.suppress(docker.errors.NotFound):
                try:
                    api.remove_container(container.id, force=True)
                except docker.errors.APIError as exc:
                    if refusal(exc) != CONFLICT:  # a removal is already under way
                        log.warning("could not remove installer %s: %s", name, exc)
        return code, output, state
