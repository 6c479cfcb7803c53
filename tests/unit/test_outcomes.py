"""The words of the results: raw executions and installs made into what the model
reads, and the checks of the code sent. Pure: no Docker."""

import pytest

from omcp_py import outcomes
from omcp_py.config import SandboxConfig
from omcp_py.errors import InvalidArgument
from omcp_py.installer import RawInstall
from omcp_py.runner.client import RawExecution

CONFIG = SandboxConfig(_env_file=None)


def _raw(**changes) -> RawExecution:
    fields = dict(
        stdout="out\n",
        stderr="",
        exit_code=0,
        timed_out=False,
        oom_killed=False,
        duration_ms=3.0,
        truncated=False,
        supervisor_lost=False,
    )
    return RawExecution(**(fields | changes))


def _run(raw: RawExecution, *, stateful: bool = False):
    return outcomes.execution_result(raw, timeout=7, stateful=stateful, config=CONFIG)


def test_a_clean_run_says_nothing_more() -> None:
    result = _run(_raw())
    assert result.success and result.output == "out\n" and result.error is None
    assert result.state is None and result.images == []


def test_a_timeout_is_said_after_the_code_s_own_stderr() -> None:
    result = _run(_raw(stderr="Traceback...\n", exit_code=137, timed_out=True))
    assert not result.success and result.timed_out
    assert result.error.startswith("Traceback...\n[omcp_py] Execution timed out after 7 s")


def test_stateful_states_are_named() -> None:
    assert _run(_raw(state={}), stateful=True).state == "kept"
    assert _run(_raw(state={"fresh": True}), stateful=True).state == "fresh"
    lost = _run(_raw(state={"killed": "SIGKILL"}, exit_code=137), stateful=True)
    assert lost.state == "lost" and "The interpreter died during this run (SIGKILL)" in lost.error
    before = _run(_raw(state={"fresh": True, "previous_lost": "out of memory"}), stateful=True)
    assert "The previous interpreter of this stateful sandbox died (out of memory)" in before.error


def test_figures_left_out_are_counted_with_why_and_the_limits() -> None:
    result = _run(_raw(images_left_out=2, images_left_out_why=["over IMAGE_BUDGET"]))
    assert result.images_left_out == 2 and result.success
    assert "2 figure(s) left out (over IMAGE_BUDGET)" in result.error
    assert "at most 20 PNG or JPEG figures, under IMAGE_BUDGET=800k" in result.error


def test_memory_and_a_lost_runner_are_said() -> None:
    assert "ran out of memory (SANDBOX_MEMORY=512m)" in _run(_raw(oom_killed=True)).error
    assert "did not answer in time" in _run(_raw(supervisor_lost=True)).error


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (RawInstall(exit_code=137, log="", timed_out=True), "did not finish within 9 s"),
        (RawInstall(exit_code=137, log="", oom_killed=True), "ran out of memory"),
        (RawInstall(exit_code=0, log="ok", installed=[]), "holds no package"),
    ],
)
def test_a_failed_install_says_why(raw: RawInstall, said: str) -> None:
    result = outcomes.install_result(raw, requirements=["x"], timeout=9, config=CONFIG)
    assert not result.success and said in result.error


def test_an_install_that_worked() -> None:
    raw = RawInstall(exit_code=0, log="Successfully installed x-1.0", installed=["x==1.0"])
    result = outcomes.install_result(raw, requirements=["x"], timeout=9, config=CONFIG)
    assert result.success and result.error is None and result.installed == ["x==1.0"]


def test_code_that_cannot_be_run_as_sent_is_refused_with_where() -> None:
    assert outcomes.encode_code("print('é')", 100) == "print('é')".encode()
    with pytest.raises(InvalidArgument, match="a NUL byte at character 3"):
        outcomes.encode_code("abc\x00", 100)
    with pytest.raises(InvalidArgument, match="a lone surrogate at character 1"):
        outcomes.encode_code("a\ud800", 100)
    with pytest.raises(InvalidArgument, match="code is 101 bytes; the limit is 100"):
        outcomes.encode_code("x" * 101, 100)
    with pytest.raises(InvalidArgument, match=r"use 1 to 600 seconds \(MAX_EXECUTION_TIMEOUT\)"):
        outcomes.check_run_timeout(0, 600)
