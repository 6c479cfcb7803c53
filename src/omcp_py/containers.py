"""Every blocking call to the engine for this server's sandboxes (run them in worker
threads). The refusals it acts on are told apart by ``engine.refusal()``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from omcp_py import outcomes, ownership
from omcp_py.cancel import Stop
from omcp_py.config import SandboxConfig
from omcp_py.egress import EgressFilter, sandbox_network
from omcp_py.engine import (
    BIND_SOURCE_MISSING,
    CONFLICT,
    IMAGE_MISSING,
    MISSING,
    NETWORK_MISSING,
    Engine,
    create_container,
    refusal,
)
from omcp_py.errors import (
    ConfigError,
    EngineError,
    ImageUnavailable,
    SandboxCreateFailed,
)
from omcp_py.hardening import (
    memory_guard,
    packages_volume,
    sandbox_run_kwargs,
)
from omcp_py.images import ImagePuller, Progress, fix_for_missing
from omcp_py.installer import Installer, RawInstall
from omcp_py.isolation import IsolationCheck
from omcp_py.models import utc_iso
from omcp_py.ownership import Owner
from omcp_py.runner.client import RawExecution, RunnerConnection, RunnerGone
from omcp_py.sandboxes import ContainerRecord, Sandbox

log = logging.getLogger(__name__)

T = TypeVar("T")


def _label_filter(labels: dict[str, str]) -> list[str]:
    """An engine label filter: ours (managed-by), and carrying ``labels``."""
    return [f"{ownership.MANAGED_BY}=omcp_py", *(f"{k}={v}" for k, v in labels.items())]


class Containers:
    """The sandbox containers of one server on the engine: blocking calls only."""

    def __init__(
        self,
        config: SandboxConfig,
        owner: Owner,
        is_current: Callable[[Sandbox], bool],
    ) -> None:
        """Args:
        config: the server's settings.
        owner: this server's identity on its containers.
        is_current: True while a sandbox is still registered (not removed meanwhile).
        """
        self.config = config
        self.owner = owner
        self.engine = Engine(config.sandbox_base_url, config.docker_timeout)
        self.images = ImagePuller()
        self._is_current = is_current
        self.isolation = IsolationCheck(self.engine, config)
        self.closing = False  # the server is shutting down: nothing new is made
        self.egress = EgressFilter(self.engine.client, config, owner)

    # -- the engine ----------------------------------------------------------------------

    def verify_engine(self) -> None:
        self.isolation.check(self.engine.client())

    def check_isolation(self, client: Any) -> None:
        """IsolationUnavailable when the engine would drop a limit or lacks the runtime."""
        self.isolation.check(client)

    # -- sandboxes -----------------------------------------------------------------------

    def create(
        self,
        sandbox_id: str,
        progress: Progress | None = None,
        allow: tuple[str, ...] = (),
        principal: str | None = None,
    ) -> Sandbox:
        """A started, hardened sandbox with its runner attached; with ``allow`` (checked
        host:port pairs) on its own network behind its own egress filter; labelled with
        ``principal`` when it is made for one (a pool's sandbox is handed over later)."""
        import docker

        client = self.engine.client()
        self.check_isolation(client)
        with self.engine.errors():
            self.images.ensure(client, self.config.docker_image, progress)
        now = time.time()
        labels = self.owner.labels() | {
            ownership.SANDBOX_ID: sandbox_id,
            ownership.CREATED: utc_iso(now),
            ownership.ROLE: "sandbox",
        }
        if principal:
            labels[ownership.PRINCIPAL] = principal
        network = {}
        if allow:
            egress = EgressFilter(
                self.engine.client, self.config, self.owner, sandbox_id=sandbox_id, allow=[*allow]
            )
            try:
                with self.engine.errors():
                    network = {"network": egress.network, "proxy": egress.proxy()}
            except Exception:
                egress.close()
                raise
        kwargs = sandbox_run_kwargs(self.config, labels, packages_volume(sandbox_id), **network)
        with self.engine.errors():
            try:
                try:
                    container = create_container(client, name=f"omcp-{sandbox_id}", **kwargs)
                except docker.errors.ImageNotFound:
                    # Removed from the engine since it was last seen there: fetch it again.
                    self.images.forget(self.config.docker_image)
                    self.images.ensure(client, self.config.docker_image, progress)
                    container = create_container(client, name=f"omcp-{sandbox_id}", **kwargs)
            except docker.errors.APIError as exc:
                self.destroy(sandbox_id, "")  # its filter and network, if it has them
                raise SandboxCreateFailed(
                    f"The engine refused to create the sandbox: {exc.explanation or exc}"
                ) from None
            runner = RunnerConnection(client.api, container.id)
            try:
                container.start()
                runner.connect()
            except docker.errors.APIError as exc:
                runner.close()
                self.destroy(sandbox_id, container.id)
                raise SandboxCreateFailed(
                    f"The sandbox container did not start: {exc.explanation or exc}. "
                    f"DOCKER_IMAGE must have python3 on PATH."
                ) from None
        if self.closing:  # the server shut down while this call was in flight
            runner.close()
            self.destroy(sandbox_id, container.id)
            raise SandboxCreateFailed("The server is shutting down.")
        return Sandbox(
            id=sandbox_id,
            container_id=container.id,
            created=now,
            timeout=self.config.sandbox_timeout,
            last_used=now,
            runner=runner,
        )

    def destroy(self, sandbox_id: str, container_id: str) -> bool:
        """Remove a sandbox's container, any installer and filter of it, then its network
        and package volume.

        Returns:
            False when the sandbox container was already gone.
        """
        if sandbox_id:
            for role in ("installer", "egress"):  # its installs, its filter if it has one
                for helper in self.list({ownership.SANDBOX_ID: sandbox_id, ownership.ROLE: role}):
                    self.remove_container(helper.id)
        existed = self.remove_container(container_id) if container_id else False
        if sandbox_id:
            self.egress.remove_network(sandbox_network(sandbox_id))
            self.remove_volume(packages_volume(sandbox_id))
        return existed

    def remove_container(self, container_id: str) -> bool:
        """Force-remove a container; False when it was already gone."""
        import docker

        with self.engine.errors():
            try:
                self.engine.client().api.remove_container(container_id, force=True, v=True)
            except docker.errors.APIError as exc:
                kind = refusal(exc)
                if kind == MISSING:
                    return False
                if kind != CONFLICT:  # a conflict: its removal is already under way
                    raise
        return True

    def remove_volume(self, name: str) -> None:
        import docker

        with self.engine.errors():
            try:
                self.engine.client().api.remove_volume(name)
            except docker.errors.APIError as exc:
                kind = refusal(exc)
                if kind not in (MISSING, CONFLICT):
                    raise
                if kind == CONFLICT:  # in use: the next sweep takes it
                    log.debug("package volume %s is still in use: %s", name, exc.explanation)

    def list(self, labels: dict[str, str]) -> list[ContainerRecord]:
        """Our containers (sandboxes and installers) that carry ``labels``."""
        with self.engine.errors():
            rows = self.engine.client().api.containers(
                all=True, filters={"label": _label_filter(labels)}
            )
        return [
            ContainerRecord(
                id=row["Id"],
                name=(row.get("Names") or ["?"])[0].lstrip("/"),
                labels=row.get("Labels") or {},
                running=row.get("State") == "running",
            )
            for row in rows
        ]

    def list_volumes(self, labels: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
        """(name, labels) of our package volumes that also carry ``labels``."""
        with self.engine.errors():
            answer = self.engine.client().api.volumes(filters={"label": _label_filter(labels)})
        return [(v["Name"], v.get("Labels") or {}) for v in answer.get("Volumes") or []]

    def orphans(self) -> list[ContainerRecord]:
        return [c for c in self.list({}) if self.owner.is_orphan(c.labels)]

    def state(self, container_id: str) -> dict[str, Any]:
        """The container's State as the engine has it; empty when it is gone."""
        import docker

        try:
            return self.engine.client().api.inspect_container(container_id)["State"] or {}
        except docker.errors.NotFound:
            return {}

    def alive(self, sandbox: Sandbox) -> bool:
        """True when the container runs and its runner's stream is open.

        Raises:
            DockerUnavailable: the engine cannot be reached.
        """
        with self.engine.errors():
            running = bool(self.state(sandbox.container_id).get("Running"))
        return running and (sandbox.runner is None or sandbox.runner.open())

    # -- the runner of a sandbox ---------------------------------------------------------

    def execute(
        self,
        sandbox: Sandbox,
        payload: bytes,
        *,
        timeout: int,
        progress: Callable[[float, int, int], None] | None = None,
        stop: Stop | None = None,
    ) -> RawExecution:
        return self.with_runner(
            sandbox,
            lambda runner: runner.execute(
                payload,
                timeout=timeout,
                limit=self.config.output_limit,
                stateful=sandbox.stateful,
                guard=memory_guard(self.config),
                images=self.config.image_budget * 3 // 4,  # the budget counts base64
                progress=progress,
                stop=stop,
            ),
        )

    def reset(self, sandbox: Sandbox) -> bool:
        return self.with_runner(sandbox, lambda runner: runner.reset())

    def with_runner(self, sandbox: Sandbox, call: Callable[[RunnerConnection], T]) -> T:
        """Call the sandbox's runner; a stopped sandbox is removed and reported."""
        import docker

        client = self.engine.client()
        if sandbox.runner is None or sandbox.runner.api is not client.api:
            # First use since a reconnect to the engine: attach anew.
            if sandbox.runner is not None:
                sandbox.runner.close()
            sandbox.runner = RunnerConnection(client.api, sandbox.container_id)
        with self.engine.errors():
            try:
                return call(sandbox.runner)
            except RunnerGone as exc:
                state = self.state(sandbox.container_id)
                if state.get("Running"):
                    raise EngineError(
                        f"The connection to sandbox {sandbox.id} broke ({exc}); the result of "
                        f"this call is lost. The sandbox is still there: try again."
                    ) from None
            except docker.errors.APIError as exc:
                kind = refusal(exc)
                if kind not in (MISSING, CONFLICT):
                    raise
                state = {} if kind == MISSING else self.state(sandbox.container_id)
            self.destroy(sandbox.id, sandbox.container_id)
        raise outcomes.gone(sandbox.id, state, self.config)

    # -- the installer of a sandbox ------------------------------------------------------

    def install(
        self,
        sandbox: Sandbox,
        requirements: list[str],
        *,
        timeout: int,
        progress: Callable[[float], None] | None = None,
        stop: Stop | None = None,
    ) -> RawInstall:
        """Run pip into the sandbox's package volume from an installer container."""
        import docker

        client = self.engine.client()
        self.check_isolation(client)
        labels = self.owner.labels() | {
            ownership.SANDBOX_ID: sandbox.id,
            ownership.ROLE: "installer",
        }
        with self.engine.errors():
            try:
                raw = Installer(client, self.config).install(
                    sandbox.volume,
                    labels=labels,
                    requirements=requirements,
                    egress=None if self.config.package_wheelhouse else self.egress,
                    timeout=timeout,
                    prepare=not sandbox.packages_ready,
                    wanted=lambda: self._is_current(sandbox),
                    progress=progress,
                    stop=stop,
                )
            except docker.errors.APIError as exc:
                if refusal(exc) == IMAGE_MISSING:
                    self.images.forget(self.config.docker_image)
                raise _installer_refused(exc, self.config.docker_image) from None
        if not self._is_current(sandbox):
            # Removed during the install: an installer container made meanwhile can
            # have created the volume again after the removal took it.
            self.remove_volume(sandbox.volume)
        sandbox.packages_ready = sandbox.packages_ready or raw.prepared
        return raw


def _installer_refused(exc: Exception, image: str) -> Exception:
    """Our error for a refusal of the installer's container; ``exc`` itself when it is
    none of those (the engine's errors() then words it)."""
    kind = refusal(exc)
    explanation = str(getattr(exc, "explanation", None) or exc)
    if kind == IMAGE_MISSING:
        return ImageUnavailable(
            f"Docker image {image!r} is gone from the engine, and the installer runs from "
            f"it: {fix_for_missing(image)}."
        )
    if kind == BIND_SOURCE_MISSING:
        return ConfigError(
            f"The installer cannot start: {explanation}. PACKAGE_CA_BUNDLE and "
            f"PACKAGE_WHEELHOUSE must be paths that exist on the Docker host."
        )
    if kind == NETWORK_MISSING:
        return ConfigError(
            f"The installer cannot start: {explanation}. Set INSTALLER_NETWORK to "
            f"a network of the engine (docker network ls)."
        )
    return exc
