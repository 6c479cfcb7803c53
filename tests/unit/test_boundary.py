"""The host's side of the sandbox boundary, without Docker: arbitrary bytes from a
runner never make the frame decoder or the result builder raise (but RunnerGone),
and every result they lead to is strict UTF-8 JSON within its size bounds."""

import base64
import json
import socket
import struct
import threading
from typing import Any

import pytest
from conftest import fields
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from omcp_py import content
from omcp_py.boundary import MAX_FIGURES, check_figures, clean, clean_text
from omcp_py.config import SandboxConfig
from omcp_py.models import ExecutionResult
from omcp_py.outcomes import execution_result
from omcp_py.runner.client import FrameReader, RunnerConnection, RunnerGone, _Collected, raw_result
from omcp_py.sandboxes import Execution
from omcp_py.transport import refusal

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", 3, 2) + b"\x08" * 5
LIMIT = 4096
BUDGET = 2000

# Any JSON, with any text: lone surrogates, controls, whatever json.loads can give.
# (Hypothesis almost never draws surrogates by itself: they are drawn on purpose.)
_hostile = st.sampled_from(["\ud800", "\udcff", "\udfff", "\x00", "\x1b", "\u2028", "\ufffd"])
_text = st.text(alphabet=st.characters() | _hostile, max_size=40)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_image = st.fixed_dictionaries(
    {},
    optional={
        "mime": st.sampled_from(["image/png", "image/jpeg", "text/html"]) | _text,
        "data": st.sampled_from([base64.b64encode(PNG).decode(), "!!", "iVBO\ud800"]) | _text,
        "width": _json,
        "height": _json,
    },
)
_reply = st.fixed_dictionaries(
    {},
    optional={
        "exit_code": _json,
        "timed_out": _json,
        "oom_killed": _json,
        "duration_ms": _json,
        "dropped": _json,
        "state": _json | st.dictionaries(st.sampled_from(["killed", "fresh"]), _json),
        "cancelled": _json,
        "images": st.lists(_image, max_size=25) | _json,
        "images_left_out": _json,
        "images_left_out_why": _json,
    },
)


def strict_json(value: Any) -> bytes:
    """The wire form of a result: must be strict UTF-8."""
    text = value.model_dump_json(by_alias=True)
    return text.encode("utf-8")  # raises on a lone surrogate


def frames(parts: list[tuple[bytes, int, bytes]]) -> bytes:
    """Our frames inside Docker's stdout multiplexing."""
    ours = b"".join(struct.pack(">cII", kind, rid, len(p)) + p for kind, rid, p in parts)
    return struct.pack(">BxxxI", 1, len(ours)) + ours


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reply=_reply,
    out=st.binary(max_size=3 * LIMIT),
    err=st.binary(max_size=300),
    stateful=st.booleans(),
)
# Found by hypothesis: JSON's Infinity as the count of figures left out crashed int().
@example(reply={"images": [], "images_left_out": float("inf")}, out=b"", err=b"", stateful=False)
def test_any_reply_makes_a_bounded_strict_result(reply, out, err, stateful) -> None:
    collected = _Collected(LIMIT)
    collected.add(b"o", out)
    collected.add(b"E", err)
    raw = raw_result(reply, collected, image_budget=BUDGET)
    assert len(raw.figures) <= MAX_FIGURES
    assert sum(len(f.data) for f in raw.figures) <= BUDGET
    assert all(base64.b64decode(f.data).startswith(PNG[:8]) for f in raw.figures)
    config = SandboxConfig(output_limit=LIMIT)
    result = execution_result(raw, timeout=5, stateful=stateful, config=config)
    wire = strict_json(clean(content.execution(Execution(result, raw.figures))))
    # Output is cut to the limit per stream; the notices and figures are bounded too.
    assert len(wire) < 2 * 6 * LIMIT + 2 * BUDGET + 20_000


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=8), rid=st.integers(0, 3))
def test_any_bytes_on_the_stream_decode_or_raise_runner_gone(chunks, rid) -> None:
    reader = FrameReader("x")
    for chunk in chunks:
        reader.feed(chunk)
        try:
            reader.parse(rid, _Collected(LIMIT), max_frame=1024)
        except RunnerGone:
            return


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=200)
    | _json.map(lambda v: json.dumps(v).encode())
    | st.dictionaries(_text, _json, min_size=1, max_size=4).map(lambda v: json.dumps(v).encode())
)
def test_any_answer_frame_is_an_object_of_clean_text_or_runner_gone(payload) -> None:
    reader = FrameReader("x")
    reader.feed(frames([(b"o", 7, b"hi"), (b"r", 7, payload)]))
    try:
        answer = reader.parse(7, _Collected(LIMIT), max_frame=1 << 20)
    except RunnerGone:
        return
    assert isinstance(answer, dict)
    json.dumps(answer, ensure_ascii=False).encode("utf-8")  # no lone surrogate left


def test_an_oversized_frame_is_refused_before_it_is_read() -> None:
    reader = FrameReader("x")
    reader.feed(struct.pack(">BxxxI", 1, 9) + struct.pack(">cII", b"r", 1, 1 << 30))
    with pytest.raises(RunnerGone, match="oversized"):
        reader.parse(1, None, max_frame=1 << 20)


@given(text=_text)
def test_clean_text_is_always_encodable(text: str) -> None:
    cleaned = clean_text(text)
    cleaned.encode("utf-8")
    if not any("\ud800" <= c <= "\udfff" for c in text):
        assert cleaned is text


def test_clean_reaches_into_models_lists_and_dicts() -> None:
    result = ExecutionResult(
        success=True,
        output="a\udcffb",
        error=None,
        exit_code=0,
        timed_out=False,
        duration_ms=1.0,
        truncated=False,
    )
    cleaned = clean({"k\ud800": [result]})
    assert cleaned == {"k\ufffd": [result.model_copy(update={"output": "a\ufffdb"})]}
    untouched = {"a": ["b"]}
    assert clean(untouched) is untouched


def test_figures_are_held_to_type_signature_count_and_budget() -> None:
    good = {"mime": "image/png", "data": base64.b64encode(PNG).decode()}
    checked = check_figures(
        [good, {"mime": "image/jpeg", "data": good["data"]}, {"mime": "text/html", "data": "PGI+"}]
        + [good] * 30,
        left_out="nonsense",
        budget=10_000,
    )
    first = checked.figures[0]
    assert (first.width, first.height, first.size) == (3, 2, len(PNG))
    assert len(checked.figures) == MAX_FIGURES - 2  # the JPEG and the HTML are refused
    assert checked.left_out == 2 + (33 - MAX_FIGURES)
    assert checked.reasons == [
        "not a JPEG image",
        "not a PNG or JPEG image",
        f"more than {MAX_FIGURES} figures in one run",
    ]
    tight = check_figures([good] * 5, 0, budget=len(good["data"]) * 2)
    assert len(tight.figures) == 2 and tight.reasons == ["over IMAGE_BUDGET"]


def _parse_error(line: str) -> ValidationError:
    from mcp.types import jsonrpc_message_adapter

    with pytest.raises(ValidationError) as info:
        jsonrpc_message_adapter.validate_json(line)
    return info.value


def test_an_unparsable_request_with_an_id_is_answered() -> None:
    line = (
        '{"jsonrpc":"2.0","id":"q1","method":"tools/call","params":{"arguments":{"x":"\\udc00"}}}'
    )
    answer = refusal(_parse_error(line))
    assert answer is not None and answer.id == "q1"
    assert "arguments.x" in answer.error.message and "U+DC00" in answer.error.message
    assert refusal(_parse_error('{"jsonrpc":"2.0","method":"n","params":{"a":"\\ud800"}}')) is None
    assert refusal(_parse_error("not json at all")) is None
    assert refusal(ValueError("x")) is None


class _Peer:
    """A runner's end of an attach connection, played by the test (no Docker)."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()

    def attach_socket(self, container_id: str, params: dict) -> socket.socket:
        return self.ours

    def request(self) -> tuple[bytes, int, bytes]:
        header = self.theirs.recv(9, socket.MSG_WAITALL)
        kind, rid, size = struct.unpack(">cII", header)
        payload = self.theirs.recv(size, socket.MSG_WAITALL) if size else b""
        return kind, rid, payload

    def send(self, data: bytes) -> None:
        self.theirs.sendall(struct.pack(">BxxxI", 1, len(data)) + data)


def test_a_new_connection_skips_what_a_broken_one_left_half_sent() -> None:
    peer = _Peer()

    def runner() -> None:
        kind, rid, nonce = peer.request()
        assert kind == b"s"
        # The rest of a frame the last connection never finished (a header claiming
        # a huge size among it), then the echo, then the answer to the next request.
        peer.send(b"\x00" * 5 + struct.pack(">cII", b"d", 1, 1 << 31) + b"junk")
        peer.send(struct.pack(">cII", b"r", rid, len(nonce)) + nonce)
        kind, rid, _ = peer.request()
        answer = json.dumps({"reset": True, "had_state": True}).encode()
        peer.send(struct.pack(">cII", b"r", rid, len(answer)) + answer)

    thread = threading.Thread(target=runner)
    thread.start()
    connection = RunnerConnection(api=peer, container_id="x")
    assert connection.reset(timeout=5) is True
    thread.join(5)


def test_a_runner_that_does_not_echo_is_reported_not_waited_for(monkeypatch) -> None:
    monkeypatch.setattr("omcp_py.runner.client.SYNC_SECONDS", 0.3)
    peer = _Peer()
    connection = RunnerConnection(api=peer, container_id="x")
    with pytest.raises(RunnerGone, match="did not answer on a new connection"):
        connection.reset(timeout=5)
    assert connection._sock is None  # the next call attaches again


def _succeeded(stdout: str, stderr: str | None) -> ExecutionResult:
    return ExecutionResult(
        success=True, output=stdout, error=stderr, exit_code=0, timed_out=False, duration_ms=1.0
    )


@pytest.mark.parametrize(
    ("stdout", "stderr"),
    [
        ("x" * 5_000_000, ""),
        ("o" * 3_000_000, "e" * 3_000_000 + "\n[omcp_py] Execution timed out after 5 s."),
        ('\x01\\"' * 1_000_000, "\u2028" * 500_000),
        ("é" * 2_000_000, None),
    ],
)
def test_an_execution_result_is_fitted_to_max_result_size(stdout, stderr) -> None:
    result = _succeeded(stdout, stderr)
    figure = check_figures(
        [{"mime": "image/png", "data": base64.b64encode(PNG + b"\0" * 300_000).decode()}],
        0,
        budget=800_000,
    ).figures
    fitted = content.execution(Execution(result, figure), limit=1 << 20)
    assert len(fitted.model_dump_json(by_alias=True, exclude_none=True)) <= (1 << 20) - 1024
    assert fitted.structured_content is None
    structured = fields(fitted)
    assert structured["truncated"] is True
    assert structured["output"].startswith(stdout[:1000]) and structured["output"].endswith(
        stdout[-1000:]
    )
    assert "Output cut to keep the result under MAX_RESULT_SIZE=1m" in structured["error"]
    if stderr and "[omcp_py]" in stderr:  # the notices of the run survive the cut
        assert "[omcp_py] Execution timed out after 5 s." in structured["error"]
    assert [b.type for b in fitted.content] == ["text", "text", "text", "image"]


@settings(max_examples=200, deadline=None)
@given(
    out=st.text(max_size=2000),
    err=st.none() | st.text(min_size=1, max_size=2000),
    figures=st.integers(0, 3),
)
def test_a_run_carries_each_stream_once_then_its_figures(out, err, figures) -> None:
    result = _succeeded(out, err)
    images = check_figures(
        [{"mime": "image/png", "data": base64.b64encode(PNG).decode()}] * figures,
        0,
        budget=800_000,
    ).figures
    built = content.execution(Execution(result, images), limit=1 << 20)
    assert built.structured_content is None
    summary = json.loads(built.content[0].text)
    assert "output" not in summary and "error" not in summary
    back = fields(built)
    assert back["output"] == out and back["error"] == err
    types = [b.type for b in built.content]
    assert types == ["text"] * (1 + bool(out) + bool(err)) + ["image"] * figures


def _got(data: bytes, path: str = "/sandbox/f"):
    from omcp_py.files import download

    return download({"path": path}, data)


@pytest.mark.parametrize(
    ("data", "kind", "blocks"),
    [
        (b"a,b\n1,2\n", "text", ["text", "text"]),
        (b'"' * 600_000, "binary", ["text", "resource"]),  # 1.2 MB as JSON text
        (PNG, "image", ["text", "image"]),
        (b"\x00\x01" * 1000, "binary", ["text", "resource"]),
    ],
)
def test_a_download_goes_once_in_the_form_that_fits(data, kind, blocks) -> None:
    built = content.download(_got(data), limit=1 << 20)
    assert built.structured_content is None
    assert [b.type for b in built.content] == blocks
    summary = fields(built)
    assert summary["kind"] == kind and summary["size"] == len(data)
    assert len(built.model_dump_json(by_alias=True, exclude_none=True)) <= (1 << 20) - 1024
    if kind == "text":
        assert built.content[1].text == data.decode()


def test_a_download_that_fits_no_form_is_refused() -> None:
    from omcp_py.errors import FileRefused

    with pytest.raises(FileRefused, match=r"/sandbox/f is 900,000 bytes; as a result it would"):
        content.download(_got(b'"' * 900_000), limit=1 << 20)


def test_a_name_that_was_not_utf8_gets_a_way_out() -> None:
    from omcp_py.config import SandboxConfig
    from omcp_py.files import refusal

    config = SandboxConfig(_env_file=None)
    shown = refusal(
        {"error": "missing", "message": "/sandbox/\ufffd.bin does not exist"}, config, "get"
    )
    assert "is not UTF-8 in the sandbox" in str(shown) and "os.listdir(b'.')" in str(shown)
    plain = refusal({"error": "missing", "message": "/sandbox/a.bin does not exist"}, config, "get")
    assert str(plain).endswith("list_files shows what is there.")
