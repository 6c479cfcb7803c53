"""The host-file confinement (host_files.py) on real directories, without Docker."""

import os
from pathlib import Path

import pytest

from omcp_py.config import SandboxConfig
from omcp_py.errors import FileRefused
from omcp_py.host_files import check_output_name, read_input, safe_output_name, write_output


def _config(tmp_path: Path, *inputs: Path) -> SandboxConfig:
    return SandboxConfig(
        _env_file=None,
        host_input_dirs=":".join(str(p) for p in inputs),
        host_output_dir=str(tmp_path / "out"),
    )


def test_reads_confined_to_the_input_directories(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b, tmp_path / "out"):
        d.mkdir()
    (a / "x.txt").write_text("x")
    (b / "y.txt").write_text("yy")
    config = _config(tmp_path, a, b)
    assert read_input(config, str(b / "y.txt"), 10).data == b"yy"
    with pytest.raises(FileRefused, match="relative, and there are 2 input directories"):
        read_input(config, "x.txt", 10)
    with pytest.raises(FileRefused, match="outside the input directories"):
        read_input(config, str(tmp_path / "a2" / "x.txt"), 10)  # a prefix is not a parent
    with pytest.raises(FileRefused, match="over MAX_UPLOAD_SIZE"):
        read_input(config, str(a / "x.txt"), 0)
    with pytest.raises(FileRefused, match="outside the input directories"):
        read_input(config, str(a), 10)  # the directory itself is no file of it
    with pytest.raises(FileRefused, match="HOST_INPUT_DIRS is not set"):
        read_input(SandboxConfig(_env_file=None), "x.txt", 10)


def test_writes_never_overwrite_and_stay_in_the_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    config = _config(tmp_path, tmp_path)
    names = [write_output(config, "r.tar.gz", b"1").name for _ in range(3)]
    assert names == ["r.tar.gz", "r (1).tar.gz", "r (2).tar.gz"]
    assert write_output(config, ".env", b"s").name == ".env"
    assert write_output(config, ".env", b"t").name == ".env (1)"
    # A link planted where the file would go is a name taken, never followed.
    (tmp_path / "out" / "link.txt").symlink_to(tmp_path / "victim.txt")
    assert write_output(config, "link.txt", b"z").name == "link (1).txt"
    assert not (tmp_path / "victim.txt").exists()
    for bad in ("a/b", "..", ".", "", "x\x00y", "n" * 256):
        with pytest.raises(FileRefused, match="plain file name"):
            check_output_name(bad)


def test_an_output_directory_that_is_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "out")
    with pytest.raises(FileRefused, match="not a link"):
        write_output(_config(tmp_path, tmp_path), "f", b"x")


def test_names_from_a_sandbox_are_made_safe_for_the_users_folder(tmp_path: Path) -> None:
    assert safe_output_name("report.csv") == "report.csv"
    assert safe_output_name("a\nb\x1b[31m.txt") == "a_b_[31m.txt"
    assert safe_output_name("\u202eevil.txt") == "_evil.txt"  # no right-to-left override
    assert safe_output_name("\udcff\udcfe.bin") == "__.bin"  # bytes that were not UTF-8
    assert safe_output_name("résumé.pdf") == "résumé.pdf"
    long = safe_output_name("y" * 300 + ".csv")
    assert long.endswith("y.csv") and len(long.encode()) <= 255 - len(" (1000)")
    (tmp_path / "out").mkdir()
    config = _config(tmp_path)
    first = write_output(config, long, b"1")
    second = write_output(config, long, b"2")  # a numbered copy still fits
    assert second.name == long.replace(".csv", " (1).csv") and first.read_bytes() == b"1"
