"""Keeping the engine and the registry in agreement: the reaper (idle sandboxes,
orphans of dead servers, package volumes left behind), reconciliation, and the
removal of everything this server owns when it stops."""

from __future__ import annotations

import logging
import time

import anyio

from omcp_py import ownership
from omcp_py.config import SandboxConfig
from omcp_py.containers import Containers
from omcp_py.errors import IsolationUnavailable
from omcp_py.pool import WarmPool
from omcp_py.sandboxes import Registry
from omcp_py.workers import Workers

log = logging.getLogger(__name__)


class Housekeeper:
    """The background work of one server's sandboxes."""

    def __init__(
        self,
        config: SandboxConfig,
        registry: Registry,
        pool: WarmPool,
        containers: Containers,
        workers: Workers,
    ) -> None:
        self.config = config
        self.registry = registry
        self.pool = pool
        self.containers = containers
        self.workers = workers

    @property
    def _mine(self) -> dict[str, str]:
        return {ownership.OWNER: self.containers.owner.instance}

    async def reaper(self) -> None:
        """Reap every REAPER_INTERVAL until cancelled (run it in a task group)."""
        # At start, in the background (initialize never waits on Docker): say at once
        # when the engine would drop a limit; every create_sandbox refuses it too.
        try:
            await self.workers.control(self.containers.verify_engine)
        except IsolationUnavailable as exc:
            log.error("%s", exc)
        except Exception as exc:  # engine down: the tools say so when they are called
            log.debug("engine check at start failed: %s", exc)
        while True:
            try:
                await self.reap()
            except Exception as exc:  # a sweep that fails is retried at the next one
                log.debug("reaper sweep failed: %s", exc)
            await anyio.sleep(self.config.reaper_interval)

    async def reap(self) -> None:
        """Remove our sandboxes idle past their timeout, and orphans of dead servers."""
        await self.reconcile()
        for sandbox in self.registry.all():
            # Checked right before the drop (no await between): a run that started
            # during an earlier removal keeps its sandbox.
            now = time.time()
            if not sandbox.expired(now):
                continue
            self.registry.expire(sandbox)
            log.info("sandbox %s idle for %.0f s: removing it", sandbox.id, now - sandbox.last_used)
            await self.workers.control(self.containers.destroy, sandbox.id, sandbox.container_id)
        for container in await self.workers.control(self.containers.orphans):
            log.info("removing orphan container %s of a server that is gone", container.name)
            await self.workers.control(self.containers.remove_container, container.id)
        await self.sweep_volumes()
        egress = self.containers.egress
        for network in await self.workers.control(egress.orphan_networks):
            log.info("removing egress network %s of a server that is gone", network)
            await self.workers.control(egress.remove_network, network)

    async def sweep_volumes(self) -> None:
        """Remove package volumes whose sandbox is gone (ours, or of dead servers)."""
        owner = self.containers.owner
        for volume, labels in await self.workers.control(self.containers.list_volumes, {}):
            if labels.get(ownership.OWNER) == owner.instance:
                # Listed after it was made: it belongs to a sandbox in the registry or
                # being created, unless that sandbox is gone.
                sandbox_id = labels.get(ownership.SANDBOX_ID, "")
                if sandbox_id in self.registry or sandbox_id in self.registry.creating:
                    continue
                if sandbox_id in self.pool.ids():
                    continue
            elif not owner.is_orphan(labels):
                continue
            log.info("removing package volume %s: its sandbox is gone", volume)
            await self.workers.control(self.containers.remove_volume, volume)

    async def reconcile(self) -> None:
        """Make the registry agree with the engine: drop what stopped or vanished."""
        # Only sandboxes known before the listing can be judged by it: one created while
        # the listing was in flight is missing from it, not gone.
        known = self.registry.ids()
        known_pool = {s.id for s in self.pool.ready}
        # Likewise a container still being made when the engine listed it shows as not
        # running, even if it runs by the time the listing is read.
        in_flight = set(self.registry.creating) | self.pool.making
        containers = await self.workers.control(self.containers.list, self._mine)
        in_flight |= set(self.registry.creating) | self.pool.making  # and those begun since
        running = {}
        for container in containers:
            if container.is_helper:
                continue  # an install's own or the egress filter: not a sandbox
            sandbox_id = container.labels.get(ownership.SANDBOX_ID)
            if container.running:
                running[sandbox_id] = container
            elif sandbox_id in in_flight:
                continue
            else:
                log.info("sandbox container %s has stopped: removing it", container.name)
                await self.workers.control(self.containers.destroy, sandbox_id or "", container.id)
        for sandbox_id in known & self.registry.ids():
            if sandbox_id not in running:
                log.info("sandbox %s vanished from the engine: forgetting it", sandbox_id)
                self.registry.forget(sandbox_id)
        self.pool.drop(known_pool - set(running))

    async def shutdown(self) -> None:
        """Remove every sandbox this server owns (on the engine, not only the registry)."""
        self.containers.closing = True
        self.registry.clear()
        self.pool.clear()
        try:
            containers = await self.workers.control(self.containers.list, self._mine)
        except Exception as exc:  # the engine may be gone at exit; say so and leave
            log.warning("could not remove this server's sandboxes at exit: %s", exc)
            return
        async with anyio.create_task_group() as tg:
            for container in containers:
                tg.start_soon(self.remove_quietly, container.id)
        try:
            for volume, _ in await self.workers.control(self.containers.list_volumes, self._mine):
                await self.workers.control(self.containers.remove_volume, volume)
        except Exception as exc:
            log.warning("could not remove this server's package volumes at exit: %s", exc)
        try:
            await self.workers.control(self.containers.egress.close)
            await self.workers.control(self.containers.egress.remove_own_networks)
        except Exception as exc:
            log.warning("could not remove this server's networks at exit: %s", exc)
        sandboxes = sum(not c.is_helper for c in containers)
        log.info("removed %d sandbox(es) at exit", sandboxes)
        self.containers.engine.close()

    async def remove_quietly(self, container_id: str) -> None:
        try:
            await self.workers.control(self.containers.remove_container, container_id)
        except Exception as exc:  # one failure must not stop the other removals
            log.warning("could not remove sandbox container %s: %s", container_id[:12], exc)
