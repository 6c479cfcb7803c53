"""What install_package accepts and asks pip (unit tests; real installs: test_install.py)."""

import pytest

from omcp_py.config import SandboxConfig
from omcp_py.errors import InvalidArgument
from omcp_py.packages import explain_failure, parse_requirements, pip_arguments


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pandas", ["pandas"]),
        ("numpy==2.1.0 requests", ["numpy==2.1.0", "requests"]),
        ("httpx[http2]>=0.27", ["httpx[http2]>=0.27"]),
        ("  six\tidna  ", ["six", "idna"]),
        # Dots in a name are fine; only a file's suffix makes it a path to pip.
        (
            "zope.interface backports.zoneinfo py.test",
            ["zope.interface", "backports.zoneinfo", "py.test"],
        ),
        (
            "Foo.Bar_baz~=1.0 torch==2.1+cpu x!=1.*",
            ["Foo.Bar_baz~=1.0", "torch==2.1+cpu", "x!=1.*"],
        ),
    ],
)
def test_plain_requirements_are_accepted(text: str, expected: list[str]) -> None:
    assert parse_requirements(text) == expected


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("x; rm -rf /", "'x;'"),
        ("--index-url http://example.invalid x", "'--index-url'"),
        ("-r /etc/passwd", "'-r'"),
        ("'''", "\"'''\""),
        ("git+https://github.com/psf/requests", "'git+https://github.com/psf/requests'"),
        ("requests@https://example.com/r.whl", "'requests@https://example.com/r.whl'"),
        ("./local/path", "'./local/path'"),
        ("/etc/passwd", "'/etc/passwd'"),
        ("six $(id)", "'$(id)'"),
        ("six`id`", "'six`id`'"),
        ('six;python_version>"3"', "'six;python_version>\"3\"'"),
        ("__import__('os')", "\"__import__('os')\""),
        ("numpy==", "'numpy=='"),
        ("[extra]", "'[extra]'"),
        ("\u017fix", "'\u017fix'"),  # a non-ASCII letter that case-folds to 's'
        # Names pip would install from a file (issue 17: no path reaches pip).
        ("x.whl", "'x.whl' names a file"),
        ("numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.whl", "names a file"),
        ("x.tar.gz", "'x.tar.gz' names a file"),
        ("X.ZIP", "'X.ZIP' names a file"),
        ("setup.py", "'setup.py' names a file"),
        ("pkg.tgz==1.0", "names a file"),
    ],
)
def test_anything_else_is_refused_naming_the_token(text: str, named: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_requirements(text)
    assert named in str(info.value)


def test_empty_and_too_many_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="package is empty"):
        parse_requirements(" \n ")
    with pytest.raises(InvalidArgument, match="10,000 requirements"):
        parse_requirements("six " * 10_000)
    with pytest.raises(InvalidArgument, match="longer than 200"):
        parse_requirements("a" * 201)


def test_requirements_reach_pip_after_the_options() -> None:
    args = pip_arguments(SandboxConfig(), ["six", "idna==3.7"])
    assert args[-3:] == ["--", "six", "idna==3.7"]
    assert "--prefer-binary" in args
    assert not any(a.startswith("--index-url") for a in args)


def test_index_settings_and_source_builds() -> None:
    config = SandboxConfig(
        package_index_url="https://pypi.example/simple",
        package_extra_index_urls="https://a.example/simple, https://b.example/simple",
        package_source_builds=False,
    )
    args = pip_arguments(config, ["six"])
    assert "--index-url=https://pypi.example/simple" in args
    assert "--extra-index-url=https://a.example/simple" in args
    assert "--extra-index-url=https://b.example/simple" in args
    assert "--only-binary=:all:" in args and "--prefer-binary" not in args
    assert not any(a.startswith("--trusted-host") for a in args)


def test_a_plain_http_index_is_trusted_as_configured() -> None:
    args = pip_arguments(SandboxConfig(package_index_url="http://10.0.0.5:8080/simple/"), ["six"])
    assert "--trusted-host=10.0.0.5:8080" in args


def test_a_wheelhouse_means_no_index() -> None:
    args = pip_arguments(SandboxConfig(package_wheelhouse="/srv/wheels"), ["six"])
    assert "--no-index" in args and "--find-links=/opt/omcp/wheelhouse" in args


CONFLICT_LOG = """\
ERROR: Cannot install six==1.15.0 and six==1.16.0 because these package versions have \
conflicting dependencies.

The conflict is caused by:
    The user requested six==1.16.0
    The user requested six==1.15.0

To fix this you could try to:
1. loosen the range of package versions you've specified
2. remove package versions to allow pip attempt to solve the dependency conflict

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/
"""


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        (
            CONFLICT_LOG,
            "Version conflict: these requirements cannot be installed together: "
            "The user requested six==1.16.0; The user requested six==1.15.0. ",
        ),
        (
            "ERROR: Could not find a version that satisfies the requirement nopkg (from versions: "
            "none)\nERROR: No matching distribution found for nopkg\n",
            "No release matches nopkg",
        ),
        (
            "WARNING: Retrying ... NewConnectionError('<...>: Failed to establish a new "
            "connection: "
            "[Errno 111] Connection refused')",
            "could not be reached",
        ),
        (
            "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED]'))",
            "Set PACKAGE_CA_BUNDLE",
        ),
        ("/usr/bin/python3: No module named pip\n", "has no pip"),
        ("ERROR: something new\n", "something new"),
    ],
)
def test_failures_are_explained_in_a_sentence(log: str, expected: str) -> None:
    message = explain_failure(log, SandboxConfig())
    assert expected in message and len(message) < 400
