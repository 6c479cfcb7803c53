"""Hostile tool arguments: other containers' ids, odd ids, huge code, bad timeouts,
wrong types, unknown parameters (also property-based, over the tool schemas)."""

from collections.abc import Iterator
from typing import Any

import anyio.from_thread
import pytest
from conftest import Server, container_of, start_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BAD_IDS = ["nope", "../x", "a" * 300, "ünïcødé", "omcp-", "0123456789ab", "'; rm -rf /"]


async def test_unknown_ids_are_not_found(server: Server) -> None:
    # One server for all of them: the ids are checked before any sandbox is touched.
    for bad_id in BAD_IDS:
        for tool, args in (
            ("execute_python_code", {"code": "1"}),
            ("remove_sandbox", {"force": True}),
            ("download_file", {"path": "a.txt"}),
            ("upload_file", {"path": "a.txt", "text": "x"}),
            ("list_files", {}),
        ):
            message = await server.error(tool, {"sandbox_id": bad_id, **args})
            assert ("No sandbox" in message) or ("sandbox_id" in message), (tool, bad_id)


async def test_other_containers_ids_and_names_are_not_sandboxes(
    server: Server, sandbox: str, docker_client
) -> None:
    container = container_of(docker_client, sandbox)
    for other in (container.id, container.id[:12], container.name):
        message = await server.error("execute_python_code", {"sandbox_id": other, "code": "1"})
        assert "No sandbox" in message


async def test_bad_arguments_get_clear_errors(server: Server, sandbox: str) -> None:
    for timeout in (0, -5, 10**9):
        message = await server.error(
            "execute_python_code", {"sandbox_id": sandbox, "code": "1", "timeout": timeout}
        )
        assert "timeout" in message
    assert "timeout" in await server.error("create_sandbox", {"timeout": 0})
    message = await server.error("execute_python_code", {"sandbox_id": sandbox})
    assert "code" in message
    message = await server.error("execute_python_code", {"sandbox_id": sandbox, "code": "a\x00b"})
    assert "NUL byte" in message
    # The sandbox is unharmed.
    assert (await server.run(sandbox, "print('ok')"))["output"] == "ok\n"


async def test_code_limits(server: Server, sandbox: str) -> None:
    # Far beyond argv's 128 KiB: delivered on stdin.
    big = "s = '" + "x" * 1_000_000 + "'\nprint(len(s))"
    result = await server.run(sandbox, big)
    assert result["output"] == "1000000\n"
    for size in (1024 * 1024 + 10, 10 * 1024 * 1024):
        too_big = "#" + "x" * size
        message = await server.error(
            "execute_python_code", {"sandbox_id": sandbox, "code": too_big}
        )
        assert "MAX_CODE_SIZE" in message
    assert (await server.run(sandbox, "print('ok')"))["output"] == "ok\n"


async def test_unknown_parameters_are_refused_by_name(server: Server, sandbox: str) -> None:
    tools = (await server.session.list_tools()).tools
    assert all(tool.input_schema.get("additionalProperties") is False for tool in tools)
    message = await server.error(
        "execute_python_code", {"sandbox_id": sandbox, "code": "print(1)", "timout": 5}
    )
    assert message == (
        "Error executing tool execute_python_code: invalid arguments: timout is not an "
        "argument of this tool (it takes code, sandbox_id, timeout)."
    )
    message = await server.error("list_sandboxes", {"verbose": True})
    assert "verbose" in message


async def test_arguments_are_what_their_schema_says(tmp_path, docker_client) -> None:
    # Strict: no string read as a number, no boolean as an integer or the reverse. Each
    # error names the argument and the type it must have; nothing is created (no pool:
    # its refills would change the count).
    async with start_server({"SANDBOX_POOL_SIZE": "0"}, cwd=tmp_path) as server:
        await _strict_arguments(server, await server.create(), docker_client)


async def _strict_arguments(server: Server, sandbox: str, docker_client: Any) -> None:
    before = _containers_of(docker_client, server)
    for tool, args, name, kind in (
        ("create_sandbox", {"timeout": "30"}, "timeout", "an integer"),
        ("create_sandbox", {"timeout": True}, "timeout", "an integer"),
        ("create_sandbox", {"stateful": "true"}, "stateful", "true or false"),
        ("create_sandbox", {"stateful": 1}, "stateful", "true or false"),
        (
            "execute_python_code",
            {"sandbox_id": sandbox, "code": "1", "timeout": "30"},
            "timeout",
            "an integer",
        ),
        ("execute_python_code", {"sandbox_id": sandbox, "code": 1}, "code", "a string"),
        ("remove_sandbox", {"sandbox_id": sandbox, "force": "yes"}, "force", "true or false"),
        ("list_files", {"sandbox_id": 5}, "sandbox_id", "a string"),
    ):
        message = await server.error(tool, args)
        assert f"invalid arguments: {name} must be {kind}" in message, (tool, args, message)
        assert "\n" not in message and "pydantic" not in message, message
    assert _containers_of(docker_client, server) == before
    assert (await server.run(sandbox, "print('ok')"))["output"] == "ok\n"


# -- property-based: any argument of a wrong type, or any unknown one, is refused -------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=5,
)


def _wrong_for(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of another JSON type than the property's (arguments are validated
    strictly: "30" is not an integer, true is not a number, 1 is not a boolean)."""
    kind = schema.get("type")
    structured = st.lists(_JSON, min_size=1, max_size=3) | st.dictionaries(
        st.text(min_size=1, max_size=5), _JSON, min_size=1, max_size=3
    )
    if kind == "string":
        return st.none() | st.integers() | st.floats(allow_nan=False) | st.booleans() | structured
    if kind == "integer":
        numeric = st.integers(min_value=1, max_value=10**6).map(str)
        texts = numeric | st.text(alphabet="abcxyz!? ", min_size=1, max_size=8)
        fractions = st.floats(min_value=0.1, max_value=0.9)
        return st.none() | texts | st.booleans() | fractions | structured
    if kind == "boolean":
        texts = st.sampled_from(["true", "false", "1", "0"]) | st.text(min_size=1, max_size=8)
        return st.none() | st.integers() | texts | structured
    return structured


@pytest.fixture(scope="module")
def portal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Server, dict]]:
    # Hypothesis drives a synchronous test: the server lives in a portal's event loop.
    with anyio.from_thread.start_blocking_portal() as portal:
        cwd = tmp_path_factory.mktemp("fuzz")
        with portal.wrap_async_context_manager(
            start_server({"SANDBOX_POOL_SIZE": "0"}, cwd=cwd)
        ) as srv:
            tools = portal.call(srv.session.list_tools).tools
            yield portal, srv, {tool.name: tool.input_schema for tool in tools}


@st.composite
def _bad_call(draw: st.DrawFn, schemas: dict[str, dict]) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(sorted(schemas)))
    properties = schemas[name].get("properties", {})
    arguments: dict[str, Any] = {
        key: draw(_JSON)
        for key in draw(
            st.sets(st.sampled_from(sorted(properties)) if properties else st.nothing())
        )
    }
    if properties and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(properties)))
        arguments[key] = draw(_wrong_for(properties[key]))
    else:
        unknown = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in properties))
        arguments[unknown] = draw(_JSON)
    return name, arguments


@pytest.mark.slow
def test_any_wrong_type_or_unknown_argument_is_a_clear_error(portal_server, docker_client) -> None:
    portal, srv, schemas = portal_server
    before = _containers_of(docker_client, srv)

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(call=_bad_call(schemas))
    def check(call: tuple[str, dict[str, Any]]) -> None:
        name, arguments = call
        result = portal.call(srv.session.call_tool, name, arguments)
        assert result.is_error, (name, arguments, result)
        text = result.content[0].text
        assert "Traceback" not in text and text.startswith(f"Error executing tool {name}")
        # One plain line that names what it refused, no pydantic dump.
        assert "invalid arguments: " in text and "\n" not in text, text
        assert "errors.pydantic.dev" not in text, text

    check()
    # Nothing else happened: no sandbox was made or removed, the server still answers.
    assert _containers_of(docker_client, srv) == before
    assert portal.call(srv.session.call_tool, "list_sandboxes", {}).is_error is False


def _containers_of(docker_client: Any, srv: Server) -> set[str]:
    owner = {"omcp_py.owner-pid": str(srv.pid)}
    return {
        c["Id"]
        for c in docker_client.api.containers(all=True, filters={"label": "omcp_py.role=sandbox"})
        if owner.items() <= c["Labels"].items()
    }
