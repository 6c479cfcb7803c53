"""The egress filter's rules and the allow-list the server gives it, without Docker."""

import socket

import pytest

from omcp_py.config import SandboxConfig
from omcp_py.egress import filter_settings
from omcp_py.packages import allowed_hosts, explain_failure
from omcp_py.runner.egress_filter import Rules, forbidden, split_absolute, split_target


def _resolver(*addresses: str):
    def resolve(host, port, family, kind):
        return [(socket.AF_INET, kind, 6, "", (a, port)) for a in addresses]

    return resolve


def test_targets_and_urls_are_parsed_strictly() -> None:
    assert split_target("PyPI.org.:443") == ("pypi.org", 443)
    assert split_target("[::1]:8080") == ("::1", 8080)
    for bad in ("pypi.org", "pypi.org:0", "pypi.org:70000", "::1:80", ":443", "a:b"):
        assert split_target(bad) is None, bad
    assert split_absolute("http://10.0.0.5:8080/simple/x/") == ("10.0.0.5", 8080, "/simple/x/")
    assert split_absolute("http://example.org") == ("example.org", 80, "/")
    for bad in ("https://example.org/", "http://user@example.org/", "ftp://x/", "/path"):
        assert split_absolute(bad) is None, bad


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "169.254.169.254",
        "fe80::1",
        "0.0.0.0",
        "224.0.0.1",
        "fd00:ec2::254",
        "100.100.100.200",
        "::ffff:127.0.0.1",
    ],
)
def test_loopback_link_local_and_metadata_are_never_destinations(address: str) -> None:
    assert forbidden(address) is not None


def test_only_allowed_pairs_pass_and_names_may_not_resolve_inward() -> None:
    rules = Rules(["pypi.org:443", "files.pythonhosted.org:443", "10.0.0.5:8080"])
    assert rules.refusal("pypi.org", 443) is None
    assert "not on the allow-list" in rules.refusal("pypi.org", 80)
    assert "not on the allow-list" in rules.refusal("169.254.169.254", 80)
    assert rules.addresses("pypi.org", 443, _resolver("151.101.0.223")) == ["151.101.0.223"]
    with pytest.raises(ValueError, match="link-local"):
        rules.addresses("pypi.org", 443, _resolver("151.101.0.223", "169.254.169.254"))
    with pytest.raises(ValueError, match="loopback"):
        rules.addresses("pypi.org", 443, _resolver("127.0.0.1"))
    # A private address is a corporate index's: allowed for a configured name.
    assert rules.addresses("pypi.org", 443, _resolver("10.1.2.3")) == ["10.1.2.3"]
    # An address the operator wrote is taken as written, loopback included.
    pinned = Rules(["127.0.0.1:9"])
    assert pinned.addresses("127.0.0.1", 9) == ["127.0.0.1"]


def test_the_allow_list_follows_the_index_settings() -> None:
    assert allowed_hosts(SandboxConfig()) == ["pypi.org:443", "files.pythonhosted.org:443"]
    config = SandboxConfig(
        package_index_url="https://devpi.corp/root/pypi/+simple/",
        package_extra_index_urls="http://10.0.0.5:8080/simple/",
        package_allowed_hosts="files.corp:443, Files.Corp:443",
    )
    assert allowed_hosts(config) == ["devpi.corp:443", "10.0.0.5:8080", "files.corp:443"]
    proxied = filter_settings(SandboxConfig(package_proxy="http://u%40x:p%3Aw@proxy.corp:3128"))
    assert proxied["upstream"] == "proxy.corp:3128"
    assert proxied["upstream_auth"] == "Basic dUB4OnA6dw=="  # "u@x:p:w"


def test_proxy_and_allowed_hosts_settings_are_checked() -> None:
    for bad in ("https://proxy:3128", "socks5://proxy:1080", "http://proxy:3128/path"):
        with pytest.raises(ValueError, match=r"must be http://host:port"):
            SandboxConfig(package_proxy=bad)
    with pytest.raises(ValueError, match="is not host:port"):
        SandboxConfig(package_allowed_hosts="pypi.org")


def test_a_refusal_is_explained_with_the_host_and_the_setting() -> None:
    line = "refuse GET 172.17.0.1:4000 from 192.168.16.3:5111: not on the allow-list (a:1)"
    message = explain_failure("ERROR: HTTP error 403", SandboxConfig(), [line])
    assert "to 172.17.0.1:4000 (not on the allow-list)" in message
    assert "PACKAGE_ALLOWED_HOSTS" in message and "pypi.org:443" in message
    failed = "fail GET 127.0.0.1:9 from 192.168.16.3:5111: no address of 127.0.0.1:9 answered"
    message = explain_failure("from versions: none", SandboxConfig(), [failed])
    assert message.startswith("The package index https://pypi.org/simple could not be reached")
