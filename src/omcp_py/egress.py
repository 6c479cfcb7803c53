"""The installer's only way out: an internal network and the egress filter on it.

pip runs package code (an sdist's build backend) while it resolves and builds, so
the installer never sits on a routed network. It sits on an internal Docker network
(no gateway, no route) whose only other member is the filter container
(``runner/egress_filter.py``), which is also on INSTALLER_NETWORK and opens
connections only to the hosts and ports of the configured indexes. One network and
one filter per server: made with the first install, removed at shutdown (and by the
reaper of another server when this one died).

Blocking (Docker calls): call it from a worker thread.
"""

import base64
import json
import logging
import threading
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from omcp_py import ownership
from omcp_py.config import SandboxConfig
from omcp_py.engine import create_container
from omcp_py.errors import ConfigError, EngineError, InvalidArgument, IsolationUnavailable
from omcp_py.hardening import egress_filter_kwargs, own_kernel
from omcp_py.networks import host_address
from omcp_py.ownership import Owner
from omcp_py.packages import allowed_hosts, host_port

log = logging.getLogger(__name__)

PORT = 3128
ROLE = "egress"


def sandbox_network(sandbox_id: str) -> str:
    """The internal network of a sandbox created with allow_hosts."""
    return f"omcp-net-{sandbox_id}"


_READY_SECONDS = 20.0


def filter_settings(config: SandboxConfig) -> dict[str, Any]:
    """What the installer's filter is told: its port, allow-list and upstream proxy."""
    settings: dict[str, Any] = {"port": PORT, "allow": allowed_hosts(config)}
    if config.package_proxy:
        proxy = urlsplit(config.package_proxy)
        settings["upstream"] = host_port(config.package_proxy)
        if proxy.username is not None:
            # pip talks to the filter, which has no credentials: the filter adds the
            # user's to what it sends on.
            pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
            settings["upstream_auth"] = "Basic " + base64.b64encode(pair.encode()).decode()
    return settings


def sandbox_hosts(requested: list[str], config: SandboxConfig) -> list[str]:
    """The host:port pairs a new sandbox asked for, each one SANDBOX_ALLOWED_HOSTS offers.

    Raises:
        InvalidArgument: one is not offered (or nothing is), or the runtime gives
            sandboxes no network.
    """
    offered = config.allowed_sandbox_hosts
    wanted = list(dict.fromkeys(entry.strip().lower() for entry in requested))
    if not wanted:
        return []
    if not offered:
        raise InvalidArgument(
            "allow_hosts: this server lets no sandbox open a connection "
            "(SANDBOX_ALLOWED_HOSTS is empty): create the sandbox without allow_hosts, or ask "
            "the operator to set SANDBOX_ALLOWED_HOSTS."
        )
    refused = [entry for entry in wanted if entry not in offered]
    if refused:
        raise InvalidArgument(
            f"allow_hosts: {', '.join(repr(r[:100]) for r in refused[:5])} not allowed; "
            f"this server's SANDBOX_ALLOWED_HOSTS offers {', '.join(offered)} (host:port)."
        )
    if own_kernel(config):
        raise InvalidArgument(
            f"allow_hosts needs a network interface, and sandboxes under "
            f"SANDBOX_RUNTIME={config.sandbox_runtime} get none (Debian's runsc runs no "
            f"networked container): create the sandbox without allow_hosts."
        )
    return wanted


class EgressFilter:
    """This server's internal network and filter container, made on first use."""

    def __init__(
        self,
        client: Any,
        config: SandboxConfig,
        owner: Owner,
        *,
        sandbox_id: str | None = None,
        allow: list[str] | None = None,
    ) -> None:
        """Args:
        client: a callable that returns a connected ``docker.DockerClient``.
        config: the server's settings.
        owner: this server's identity (names and labels).
        sandbox_id: the sandbox this filter serves alone (None: the installer's).
        allow: that sandbox's host:port pairs.
        """
        self._client = client
        self.config = config
        self.owner = owner
        self.sandbox_id = sandbox_id
        if sandbox_id is None:
            self.network = f"omcp-egress-{owner.instance[:12]}"
            self.settings = filter_settings(config)
        else:
            # One network per sandbox: two sandboxes on one could reach each other.
            self.network = sandbox_network(sandbox_id)
            self.settings = {"port": PORT, "allow": list(allow or [])}
        self._lock = threading.Lock()
        self._proxy: str | None = None
        self._container_id: str | None = None

    def labels(self) -> dict[str, str]:
        labels = self.owner.labels() | {ownership.ROLE: ROLE}
        if self.sandbox_id is not None:
            labels[ownership.SANDBOX_ID] = self.sandbox_id
        return labels

    def proxy(self) -> str:
        """``http://address:port`` of the running filter on :attr:`network`; starts both
        when needed, and again when the filter is gone."""
        with self._lock:
            if self._proxy is not None and self._running():
                return self._proxy
            self._remove_container()
            self._proxy = self._start()
            return self._proxy

    def _running(self) -> bool:
        import docker

        try:
            state = self._client().api.inspect_container(self._container_id)["State"]
        except docker.errors.NotFound:
            return False
        return bool((state or {}).get("Running"))

    def _ensure_network(self) -> None:
        import docker

        client = self._client()
        try:
            client.api.inspect_network(self.network)
            return
        except docker.errors.NotFound:
            pass
        client.api.create_network(
            self.network,
            driver="bridge",
            internal=True,
            # "internal" stops forwarding only: the bridge's own address still leads to
            # the host's services (seen here: package code reached a port on 172.17.0.1).
            # With no IPv4 address on the bridge nothing answers there; the filter
            # checks that it is so before it serves (an engine may ignore the option).
            options={"com.docker.network.bridge.inhibit_ipv4": "true"},
            labels=self.labels(),
            check_duplicate=True,
        )

    def _gateway(self) -> str:
        """The address the network's bridge would have: its Gateway, else the subnet's
        first address."""
        network = self._client().api.inspect_network(self.network)
        return host_address(network, interface=lambda _name: None)

    def _start(self) -> str:
        import docker

        self._ensure_network()
        client = self._client()
        settings = json.dumps(self.settings | {"probe": self._gateway()})
        kwargs = egress_filter_kwargs(self.config, self.labels(), settings)
        container = create_container(
            client,
            name=f"{self.network}-filter-{int(time.time() * 1000) % 10**8}",
            **kwargs,
        )
        self._container_id = container.id
        try:
            client.api.connect_container_to_network(container.id, self.network)
            container.start()
        except docker.errors.APIError as exc:
            self._remove_container()
            if self.config.installer_network in ("host", "none"):
                raise ConfigError(
                    f"INSTALLER_NETWORK={self.config.installer_network} cannot hold the egress "
                    f"filter beside its internal network ({exc}): name a bridge network "
                    f"(docker network ls), e.g. bridge."
                ) from None
            raise
        deadline = time.monotonic() + _READY_SECONDS
        logs = b""
        while time.monotonic() < deadline:
            logs = client.api.logs(container.id, stdout=True, stderr=True, tail=50)
            if b"listening" in logs:
                break
            state = client.api.inspect_container(container.id)["State"] or {}
            if not state.get("Running"):
                break
            time.sleep(0.02)
        else:
            logs = b""
        if b"exposed:" in logs:
            self._remove_container()
            raise IsolationUnavailable(
                "The engine left the host reachable from the installer's internal network "
                "(it ignored com.docker.network.bridge.inhibit_ipv4), so package code could "
                "reach this machine's services: installs are refused. Install from "
                "PACKAGE_WHEELHOUSE (no network), or use Docker Engine on Linux."
            )
        if b"listening" not in logs:
            self._remove_container()
            raise EngineError(
                f"The installer's egress filter did not start: "
                f"{logs.decode('utf-8', 'replace').strip()[-300:] or 'no answer'}. "
                f"DOCKER_IMAGE must have python3 3.8 or newer."
            )
        networks = client.api.inspect_container(container.id)["NetworkSettings"]["Networks"]
        address = ((networks or {}).get(self.network) or {}).get("IPAddress")
        if not address:
            self._remove_container()
            raise EngineError(
                f"The engine gave the egress filter no address on {self.network}: "
                f"the installer cannot reach it. Check the engine's address pools."
            )
        log.info("egress filter up on %s (%s:%d)", self.network, address, PORT)
        return f"http://{address}:{PORT}"

    def refusals(self, address: str) -> list[str]:
        """The filter's recent refusals and failures of connections from ``address``."""
        import docker

        if self._container_id is None or not address:
            return []
        try:
            logs = self._client().api.logs(self._container_id, stdout=True, stderr=True, tail=500)
        except docker.errors.APIError:
            return []
        source = f" from {address}:"
        return [
            line[:300]
            for line in logs.decode("utf-8", "replace").splitlines()
            if line.startswith(("refuse ", "fail ")) and source in line
        ][-5:]

    def _remove_container(self) -> None:
        import docker

        if self._container_id is None:
            return
        try:
            self._client().api.remove_container(self._container_id, force=True)
        except docker.errors.NotFound:
            pass  # shutdown's sweep of this server's containers took it first
        except docker.errors.APIError as exc:
            log.warning("could not remove the egress filter: %s", exc)
        self._container_id = None
        self._proxy = None

    def orphan_networks(self) -> list[str]:
        """Egress networks of servers that are gone (the reaper removes them)."""
        rows = self._client().api.networks(filters={"label": f"{ownership.ROLE}={ROLE}"})
        return [row["Name"] for row in rows or [] if self.owner.is_orphan(row.get("Labels") or {})]

    def remove_own_networks(self) -> None:
        """Remove every network of this server (at shutdown, once its containers are gone)."""
        labels = [f"{ownership.ROLE}={ROLE}", f"{ownership.OWNER}={self.owner.instance}"]
        for row in self._client().api.networks(filters={"label": labels}) or []:
            self.remove_network(row["Name"])

    def remove_network(self, name: str) -> None:
        """Remove a network; one still in use (its filter not gone yet) waits for the
        next sweep, one that is gone (or never was) is no error."""
        import docker

        try:
            self._client().api.remove_network(name)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            log.debug("network %s not removed yet: %s", name, exc)

    def close(self) -> None:
        """Remove the filter and the network (at shutdown; safe to call twice)."""
        import docker

        with self._lock:
            self._remove_container()
            try:
                self._client().api.remove_network(self.network)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                log.warning("could not remove network %s: %s", self.network, exc)
