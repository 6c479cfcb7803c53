"""The host's address on a network, from inspect answers with and without the
optional fields (Docker 20.10 lists the default bridge with no Gateway)."""

import pytest

from omcp_py.errors import EngineError
from omcp_py.networks import host_address, interface_address

BRIDGE_OPTIONS = {"com.docker.network.bridge.default_bridge": "true"}


def no_interface(name: str) -> None:
    return None


def test_the_listed_gateway_comes_first() -> None:
    network = {"IPAM": {"Config": [{"Subnet": "10.9.0.0/16", "Gateway": "10.9.0.254"}]}}
    assert host_address(network, no_interface) == "10.9.0.254"


def test_without_gateway_the_bridge_interface_is_asked() -> None:
    asked: list[str] = []

    def interface(name: str) -> str:
        asked.append(name)
        return "172.17.0.1"

    network = {"IPAM": {"Config": [{"Subnet": "172.17.0.0/16"}]}, "Options": BRIDGE_OPTIONS}
    assert host_address(network, interface) == "172.17.0.1"
    assert asked == ["docker0"]
    named = {"IPAM": {"Config": []}, "Options": {"com.docker.network.bridge.name": "br-x"}}
    assert host_address(named, interface) == "172.17.0.1"
    assert asked[-1] == "br-x"


def test_without_gateway_or_interface_the_subnets_first_address() -> None:
    network = {"IPAM": {"Config": [{"Subnet": "172.18.0.0/16"}]}, "Options": BRIDGE_OPTIONS}
    assert host_address(network, no_interface) == "172.18.0.1"
    # An IPv6 subnet is passed over for an IPv4 one.
    dual = {"IPAM": {"Config": [{"Subnet": "fd00::/64"}, {"Subnet": "10.1.2.0/24"}]}}
    assert host_address(dual, no_interface) == "10.1.2.1"


@pytest.mark.parametrize(
    "network",
    [
        {},
        {"Name": "x", "IPAM": None},
        {"Name": "x", "IPAM": {"Config": None}},
        {"Name": "x", "IPAM": {"Config": [{}]}},
        {"Name": "x", "IPAM": {"Config": [{"Subnet": "not a subnet"}]}, "Options": None},
    ],
)
def test_an_answer_with_nothing_to_go_on_is_a_clear_error(network: dict) -> None:
    with pytest.raises(EngineError, match="host's address on it is unknown"):
        host_address(network, no_interface)


def test_an_interface_that_does_not_exist_is_none() -> None:
    assert interface_address("omcp-no-such0") is None
    assert interface_address("lo") == "127.0.0.1"
