"""Known container-escape bugs told from the engine's `docker version` answer."""

import pytest

from omcp_py.escapes import warnings


def _with_runc(version: str) -> dict:
    return {
        "Components": [
            {"Name": "Engine", "Version": "28.0.0"},
            {"Name": "runc", "Version": version},
        ]
    }


@pytest.mark.parametrize(
    ("version", "warned"),
    [
        ("1.1.5+ds1", True),  # Debian 12's, as this machine's engine reports it
        ("1.1.15", True),
        ("1.2.7", True),
        ("1.2.8", False),
        ("v1.3.2", True),
        ("1.3.3", False),
        ("1.4.0-rc.2", True),
        ("1.4.0-rc.3", False),
        ("1.4.0", False),
        ("2.0.0", False),
        ("not a version", False),
    ],
)
def test_runc_before_the_2025_fixes_is_named(version: str, warned: bool) -> None:
    said = warnings(_with_runc(version))
    assert bool(said) == warned, said
    if warned:
        assert f"runc {version}" in said[0] and "CVE-2025-31133" in said[0]
        assert "update the engine's runc" in said[0]


@pytest.mark.parametrize(
    ("platform", "warned"),
    [
        ("Docker Desktop 4.44.2 (202017)", True),
        ("Docker Desktop 4.43.0 (198134)", True),
        ("Docker Desktop 4.44.3 (202357)", False),
        ("Docker Desktop 4.50.0 (209931)", False),
        ("Docker Engine - Community", False),
        ("", False),
    ],
)
def test_docker_desktop_before_4_44_3_is_named(platform: str, warned: bool) -> None:
    said = warnings({"Platform": {"Name": platform}})
    assert bool(said) == warned, said
    if warned:
        assert "CVE-2025-9074" in said[0] and "update Docker Desktop" in said[0]


@pytest.mark.parametrize(
    "answer",
    [
        None,
        {},
        {"Components": None},
        {"Components": [None, 3, {"Name": "runc"}]},
        {"Platform": None},
        [],
    ],
)
def test_answers_without_the_fields_say_nothing(answer) -> None:
    assert warnings(answer) == []


@pytest.mark.parametrize(
    ("version", "warned"),
    [
        ("1.6.20~ds1", True),  # Debian 12's, as this machine's engine reports it
        ("1.6.38", False),
        ("1.7.26", True),
        ("v1.7.27", False),
        ("2.0.3", True),
        ("2.0.4", False),
        ("2.1.0", False),
        ("1.5.13", True),
        ("garbage", False),
    ],
)
def test_containerd_before_the_user_id_fix_is_named(version: str, warned: bool) -> None:
    said = warnings({"Components": [{"Name": "containerd", "Version": version}]})
    assert bool(said) == warned, said
    if warned:
        assert f"containerd {version}" in said[0] and "CVE-2024-40635" in said[0]
