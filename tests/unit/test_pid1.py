"""PID 1's program without Docker: its assembly, its protocol with the host's client,
the path walker, the seccomp filter and the figure helpers, imported as parts."""

import ast
import os
import socket
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omcp_py.runner import assemble
from omcp_py.runner.client import FrameReader, RunnerGone, _Collected
from omcp_py.runner.pid1 import figures, files, protocol, seccomp
from omcp_py.runner.pid1.become import CODE

# -- the assembled program -----------------------------------------------------------


def _top_level_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def test_the_assembled_program_compiles_for_python_3_8_and_fits_argv() -> None:
    program = assemble.program()
    ast.parse(program, feature_version=(3, 8))
    compile(program, "pid1", "exec")
    # It travels as one argument (Linux: 128 KiB at most); keep a wide margin.
    assert len(program.encode()) < 96 * 1024, len(program.encode())
    assert program.rstrip().endswith("main()")
    assert "from omcp_py" not in program and '"""Figures:' not in program


def test_no_name_is_defined_by_two_parts() -> None:
    seen: dict[str, str] = {}
    for part in assemble.PARTS:
        for name in _top_level_names(assemble.part_source(part)):
            assert name not in seen, f"{name} is defined by {seen[name]} and {part}"
            seen[name] = part


def test_parts_import_only_the_stdlib_and_earlier_parts() -> None:
    for index, part in enumerate(assemble.PARTS):
        earlier = {f"{assemble.PACKAGE}.{p}" for p in assemble.PARTS[:index]}
        for node in ast.walk(ast.parse(assemble.part_source(part))):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                assert module in earlier or module in sys.stdlib_module_names, (part, module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    assert top in sys.stdlib_module_names or top == "matplotlib", (part, top)


def test_no_part_rebinds_a_global() -> None:
    # State shared by parts lives in objects (CODE, SECCOMP): imported or assembled,
    # every part sees the same values.
    for part in assemble.PARTS:
        tree = ast.parse(assemble.part_source(part))
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Global)], part


# -- the protocol, as the host's client reads it ---------------------------------------


def _docker_stream(data: bytes) -> bytes:
    return struct.pack(">BxxxI", 1, len(data)) + data


def test_frames_round_trip_through_the_client() -> None:
    reader = FrameReader("x")
    collected = _Collected(1024)
    stream = (
        protocol.frame(protocol.STDOUT, 3, b"hello ")
        + protocol.frame(protocol.STDOUT, 9, b"(another request's)")
        + protocol.frame(b"?", 3, b"an unknown kind is passed over")
        + protocol.frame(protocol.RESULT, 3, b'{"exit_code": 0}')
    )
    # Byte by byte: a frame cut anywhere waits for the rest.
    answer = None
    for index in range(len(stream)):
        reader.feed(_docker_stream(stream[index : index + 1]))
        answer = reader.parse(3, collected, max_frame=1024)
        if index < len(stream) - 1:
            assert answer is None
    assert answer == {"exit_code": 0}
    assert bytes(collected.stdout.head) == b"hello "


def test_an_oversized_frame_is_a_broken_runner_not_a_wait() -> None:
    reader = FrameReader("x")
    reader.feed(_docker_stream(protocol.FRAME.pack(protocol.RESULT, 1, 10_000_000)))
    with pytest.raises(RunnerGone, match="oversized frame"):
        reader.parse(1, None, max_frame=1 << 20)


def test_the_kinds_are_distinct_single_bytes() -> None:
    kinds = [v for k, v in vars(protocol).items() if k.isupper() and isinstance(v, bytes)]
    assert len(kinds) == len(set(kinds)) == 12 and all(len(k) == 1 for k in kinds)


# -- the path walker -----------------------------------------------------------------


@pytest.fixture
def code_dir(tmp_path: Path):
    """The code's directory is a temporary one for the walker."""
    before = CODE.dir
    CODE.dir = str(tmp_path)
    yield tmp_path
    CODE.dir = before


def _refused(kind: str, call, *args):
    with pytest.raises(files.Refused) as caught:
        call(*args)
    assert caught.value.kind == kind, (caught.value.kind, str(caught.value))
    return str(caught.value)


def test_paths_are_confined_to_the_code_dir_and_tmp(code_dir: Path) -> None:
    assert files.split_path("a/./b//c.txt") == (str(code_dir), ["a", "b", "c.txt"])
    assert files.split_path(f"{code_dir}/x") == (str(code_dir), ["x"])
    assert files.split_path("/tmp/y") == ("/tmp", ["y"])
    assert "goes up with '..'" in _refused("outside", files.split_path, "a/../../etc/passwd")
    assert "is outside the sandbox's files" in _refused("outside", files.split_path, "/etc/x")
    # A prefix is not a parent: /tmpfoo is not under /tmp.
    _refused("outside", files.split_path, "/tmpfoo/x")
    _refused("invalid", files.split_path, "")


def test_a_link_anywhere_on_the_path_is_refused_not_followed(code_dir: Path, tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    (code_dir / "d").mkdir()
    (code_dir / "d" / "up").symlink_to(outside)
    (code_dir / "ln").symlink_to(outside / "secret")
    said = _refused("link", files.get_file, {"path": "d/up/secret", "max": 100})
    assert "is a symbolic link" in said
    _refused("link", files.get_file, {"path": "ln", "max": 100})
    _refused("link", files.list_files, {"path": "d/up"})


def test_a_fifo_is_refused_at_once_and_a_missing_file_named(code_dir: Path) -> None:
    os.mkfifo(code_dir / "pipe")  # opening it for reading would block: never opened
    assert "is a FIFO, not a regular file" in _refused(
        "special", files.get_file, {"path": "pipe", "max": 100}
    )
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(code_dir / "sock"))
        _refused("special", files.get_file, {"path": "sock", "max": 100})
    _refused("missing", files.get_file, {"path": "nothing/here", "max": 100})
    _refused("directory", files.get_file, {"path": ".", "max": 100})


def test_sizes_and_long_names(code_dir: Path) -> None:
    (code_dir / "f").write_bytes(b"x" * 101)
    assert "is 101 bytes" in _refused("too_large", files.get_file, {"path": "f", "max": 100})
    answer, data = files.get_file({"path": "f", "max": 101})
    assert data == b"x" * 101 and answer["size"] == 101
    with pytest.raises(OSError):  # ENAMETOOLONG: file_request answers it as an error
        files.get_file({"path": "n" * 300, "max": 100})


def test_a_listing_is_bounded_by_count_and_bytes(code_dir: Path) -> None:
    (code_dir / "l").mkdir()
    for i in range(protocol.LIST_LIMIT + 5):
        os.symlink("t" * 2000, code_dir / "l" / f"{i:05d}")
    listed, _ = files.list_files({"path": "l"})
    entries = listed["entries"]
    assert listed["truncated"] is True and len(entries) <= protocol.LIST_LIMIT
    assert all(len(e["target"]) <= protocol.TARGET_CHARS + 3 for e in entries)
    size = sum(len(e["path"]) + len(e.get("target") or "") for e in entries)
    assert size <= protocol.LIST_BYTES + 4096


# -- the seccomp filter ----------------------------------------------------------------

X86_64, AARCH64, OTHER = 0xC000003E, 0xC00000B7, 0x40000003
ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050001, 0x00050026


def _verdict(program, arch: int, nr: int, arg0: int = 0) -> int:
    """Run the classic BPF program on one seccomp_data, as the kernel does."""
    data = {0: nr, 4: arch, 16: arg0 & 0xFFFFFFFF}
    pc, acc = 0, 0
    for _ in range(len(program)):
        code, jt, jf, k = program[pc]
        if code == 0x20:
            acc, pc = data[k], pc + 1
        elif code == 0x15:
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x35:
            pc += 1 + (jt if acc >= k else jf)
        elif code == 0x45:
            pc += 1 + (jt if acc & k else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unknown instruction {code:#x}")
    raise AssertionError("fell off the program")


def test_the_filter_refuses_namespaces_and_x32_and_allows_the_rest() -> None:
    program = seccomp.seccomp_program()
    assert len(program) < 4096 and all(jt < 256 and jf < 256 for _, jt, jf, _ in program)
    clone_newuser = 0x10000000
    cases = [
        (X86_64, 0, 0, ALLOW),  # read
        (X86_64, 272, 0, EPERM),  # unshare
        (X86_64, 165, 0, EPERM),  # mount
        (X86_64, 321, 0, EPERM),  # bpf
        (X86_64, 56, 0x11, ALLOW),  # clone for a thread or fork
        (X86_64, 56, clone_newuser, EPERM),  # clone into a user namespace
        (X86_64, 435, 0, ENOSYS),  # clone3: the C library falls back to clone
        (X86_64, 0x40000000 | 272, 0, EPERM),  # x32 calls, all of them
        (X86_64, 0x40000000, 0, EPERM),
        (AARCH64, 97, 0, EPERM),  # unshare
        (AARCH64, 220, clone_newuser, EPERM),
        (AARCH64, 63, 0, ALLOW),  # read
        (OTHER, 272, 0, ALLOW),  # another architecture keeps the runtime's rules
    ]
    for arch, nr, arg0, expected in cases:
        assert _verdict(program, arch, nr, arg0) == expected, (hex(arch), nr, hex(arg0))


# -- figures ---------------------------------------------------------------------------


@given(sizes=st.lists(st.integers(0, 10**6), max_size=20), budget=st.integers(0, 10**7))
def test_fair_shares_keep_small_images_and_never_exceed_the_budget(sizes, budget) -> None:
    shares = figures.fair_shares(sizes, budget)
    assert len(shares) == len(sizes) and sum(shares) <= budget
    assert all(0 <= share <= size for share, size in zip(shares, sizes, strict=True))
    if sum(sizes) <= budget:
        assert shares == sizes


@given(data=st.binary(max_size=200))
def test_image_size_reads_anything_without_raising(data: bytes) -> None:
    width, height = figures.image_size(b"\xff\xd8" + data)
    assert width >= 0 and height >= 0


def test_image_size_of_png_and_jpeg_headers() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", 640, 480)
    assert figures.image_size(png) == (640, 480)
    jpeg = b"\xff\xd8" + b"\xff\xe0\x00\x04ab" + b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 3, 5)
    assert figures.image_size(jpeg + b"\x00" * 8) == (5, 3)
    # A zero-length segment ends the walk instead of looping on it.
    assert figures.image_size(b"\xff\xd8\xff\xe0\x00\x00" + b"\x00" * 20) == (0, 0)
