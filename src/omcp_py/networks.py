"""Docker networks as the engine describes them: pure reads of its answers.

Engines leave optional fields out (Docker 20.10 lists the default bridge's subnet
without its ``Gateway``), so every read here has a fallback or a clear error.
"""

import fcntl
import ipaddress
import socket
import struct
from collections.abc import Callable
from typing import Any

from omcp_py.errors import EngineError

_BRIDGE_NAME = "com.docker.network.bridge.name"
_SIOCGIFADDR = 0x8915


def interface_address(name: str) -> str | None:
    """The IPv4 address of a network interface of this machine, or None.

    Only meaningful where the engine runs on this machine (its bridge is ours).
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("256s", name.encode()[:15])
            answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
    except OSError:
        return None
    return socket.inet_ntoa(answer[20:24])


def host_address(
    network: dict[str, Any],
    interface: Callable[[str], str | None] = interface_address,
) -> str:
    """The host's address as a container on ``network`` reaches it.

    In order: the network's ``Gateway`` when the engine lists one; the address of its
    bridge interface (the ``com.docker.network.bridge.name`` option, ``docker0`` for
    the default bridge); the first address of its subnet, which is where Docker puts
    the bridge when it chooses.

    Args:
        network: the engine's ``network inspect`` answer (``Network.attrs``).
        interface: looks up an interface's address (the host's, by default).

    Raises:
        EngineError: the answer names neither a gateway, a bridge nor a subnet.
    """
    configs = [c for c in (network.get("IPAM") or {}).get("Config") or [] if c]
    for config in configs:
        if config.get("Gateway"):
            return str(config["Gateway"]).split("/")[0]
    options = network.get("Options") or {}
    bridge = options.get(_BRIDGE_NAME) or (
        "docker0" if options.get("com.docker.network.bridge.default_bridge") == "true" else None
    )
    if bridge:
        found = interface(bridge)
        if found:
            return found
    for config in configs:
        try:
            subnet = ipaddress.ip_network(str(config.get("Subnet")), strict=False)
        except ValueError:
            continue
        if subnet.version == 4 and subnet.num_addresses > 2:
            return str(next(subnet.hosts()))
    raise EngineError(
        f"The engine's network {network.get('Name', '?')!r} lists no gateway, bridge or "
        f"IPv4 subnet: the host's address on it is unknown. Use another network, or "
        f"give the containers `host.docker.internal:host-gateway`."
    )
