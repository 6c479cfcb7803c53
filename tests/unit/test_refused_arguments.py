"""One plain line for refused tool arguments, whatever the caller sent as keys."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from omcp_py.arguments import plain_error, strict_model


class _Args(BaseModel):
    sandbox_id: str
    timeout: int = 30


Strict = strict_model(_Args)


def _refusal(arguments: dict) -> str:
    with pytest.raises(ValidationError) as caught:
        Strict.model_validate(arguments)
    return plain_error("execute_python_code", caught.value, ["sandbox_id", "timeout"])


def test_a_misspelt_argument_is_named_with_what_the_tool_takes() -> None:
    said = _refusal({"sandbox_id": "a", "timout": 5})
    assert said == (
        "Error executing tool execute_python_code: invalid arguments: timout is not an "
        "argument of this tool (it takes sandbox_id, timeout)."
    )


def test_a_key_with_a_newline_is_quoted_on_the_one_line() -> None:
    # Found by the argument fuzzer through the real server: {"\n": null} broke the line.
    said = _refusal({"sandbox_id": "a", "\n": None})
    assert "\n" not in said and "'\\n' is not an argument of this tool" in said, said


@given(key=st.text(min_size=1, max_size=200).filter(lambda k: k not in ("sandbox_id", "timeout")))
def test_any_unknown_key_makes_one_bounded_line(key: str) -> None:
    said = _refusal({"sandbox_id": "a", key: 1})
    assert "\n" not in said and "\r" not in said and len(said) < 400, said
