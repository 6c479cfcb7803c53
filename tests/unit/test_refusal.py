"""docker-py's refusals told apart in one place (engine.refusal), from exceptions as
docker-py raises them for the engine's answers."""

import json

import docker
import pytest
import requests

from omcp_py.engine import (
    BIND_SOURCE_MISSING,
    CONFLICT,
    IMAGE_MISSING,
    MISSING,
    NETWORK_MISSING,
    OTHER,
    refusal,
)


def _answer(status: int, explanation: str) -> docker.errors.APIError:
    """The exception docker-py raises for this answer of the engine (its own factory)."""
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps({"message": explanation}).encode()
    with pytest.raises(docker.errors.APIError) as raised:
        docker.errors.create_api_error_from_http_exception(
            requests.exceptions.HTTPError(response=response)
        )
    return raised.value


@pytest.mark.parametrize(
    ("status", "explanation", "kind"),
    [
        (404, "No such container: 3f2a", MISSING),
        (404, "get omcp-pkg-x: no such volume", MISSING),
        (404, "No such image: python:3.11-slim", IMAGE_MISSING),
        (409, "removal of container 3f2a is already in progress", CONFLICT),
        (409, "remove omcp-pkg-x: volume is in use", CONFLICT),
        (500, "Container 3f2a is not running", CONFLICT),
        (
            400,
            "invalid mount config: bind source path does not exist: /etc/ca.pem",
            BIND_SOURCE_MISSING,
        ),
        (404, "network omcp-none not found", NETWORK_MISSING),
        (500, "something else went wrong", OTHER),
    ],
)
def test_each_refusal_is_told_apart(status: int, explanation: str, kind: str) -> None:
    assert refusal(_answer(status, explanation)) == kind


def test_a_refusal_without_a_response_is_other() -> None:
    assert refusal(docker.errors.APIError("no response at all")) == OTHER
