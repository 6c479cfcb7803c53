"""Bearer tokens from AUTH_TOKENS_FILE (omcp_py/auth.py), without a server."""

import asyncio
import os

import pytest

from omcp_py.auth import TokenFileVerifier, new_token, parse_tokens, token_hash
from omcp_py.errors import ConfigError


def _write(path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))
    # Same size and a coarse clock could hide an edit: move the mtime on explicitly.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_a_token_names_its_principal_and_a_removed_line_revokes_it(tmp_path) -> None:
    alice, bob = new_token(), new_token()
    assert alice != bob and len(alice) > 40
    path = tmp_path / "tokens"
    _write(path, ["# team", "", f"alice:{token_hash(alice)}", f"bob:{token_hash(bob).upper()}"])
    verifier = TokenFileVerifier(str(path), resource="http://127.0.0.1:8000/mcp")
    found = asyncio.run(verifier.verify_token(alice))
    assert found is not None and found.client_id == "alice"
    assert found.resource == "http://127.0.0.1:8000/mcp"
    assert verifier.principal(bob) == "bob"
    assert verifier.principal("omcp_" + "x" * 43) is None
    assert verifier.principal(token_hash(alice)) is None  # the hash is not the token

    _write(path, [f"bob:{token_hash(bob)}"])
    assert verifier.principal(alice) is None
    assert verifier.principal(bob) == "bob"


def test_a_file_broken_while_serving_refuses_every_token(tmp_path) -> None:
    token = new_token()
    path = tmp_path / "tokens"
    _write(path, [f"alice:{token_hash(token)}"])
    verifier = TokenFileVerifier(str(path))
    _write(path, ["alice:not-a-hash"])
    assert verifier.principal(token) is None
    path.unlink()
    assert verifier.principal(token) is None
    _write(path, [f"alice:{token_hash(token)}"])
    assert verifier.principal(token) == "alice"


@pytest.mark.parametrize(
    ("lines", "said"),
    [
        (["alice"], "line 1 is not 'name:sha256-of-the-token'"),
        (["alice:" + "0" * 63], "line 1 is not"),
        (["# x", "a b:" + "0" * 64], "line 2 is not"),
        (["-alice:" + "0" * 64], "line 1 is not"),
        (["alice:" + "0" * 64, "bob:" + "0" * 64], "line 2 repeats a token of 'alice'"),
    ],
)
def test_bad_lines_are_named(lines: list[str], said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        parse_tokens("\n".join(lines), "AUTH_TOKENS_FILE t")


def test_a_missing_file_stops_the_start(tmp_path) -> None:
    with pytest.raises(ConfigError, match="AUTH_TOKENS_FILE: cannot read"):
        TokenFileVerifier(str(tmp_path / "none"))
