"""The installer script's disk limit (runner/sandbox_install.py), without Docker or pip:
pip is replaced by a function that writes files, as fast as a small wheel installs."""

import json
import sys
from pathlib import Path

import pytest

from omcp_py.runner import sandbox_install


def _install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary, writes: int):
    target = tmp_path / "volume"
    target.mkdir()
    (target / "kept.py").write_bytes(b"x" * 1000)

    def pip(args, tmp, where, limit, command):
        # Done before the watch's first look: only the measure after pip can see it.
        (Path(where) / "big.bin").write_bytes(b"y" * writes)
        return 0, 0

    monkeypatch.setattr(sandbox_install, "run_pip", pip)
    monkeypatch.setenv("PYTHONUSERBASE", str(target))
    monkeypatch.setattr(sys, "argv", ["-c", str(target), str(64 * 1024), "", "1", "driver"])
    sandbox_install.main()
    trailer = capsysbinary.readouterr().out.decode().rpartition(sandbox_install.MARKER)[2]
    return target, json.loads(trailer)


def test_an_install_that_ends_past_the_limit_is_undone(tmp_path, monkeypatch, capsysbinary):
    target, result = _install(tmp_path, monkeypatch, capsysbinary, writes=200 * 1024)
    assert result["disk_exceeded"] > 64 * 1024
    assert sorted(p.name for p in target.iterdir()) == ["kept.py"]


def test_an_install_within_the_limit_stays(tmp_path, monkeypatch, capsysbinary):
    target, result = _install(tmp_path, monkeypatch, capsysbinary, writes=10 * 1024)
    assert "disk_exceeded" not in result
    assert sorted(p.name for p in target.iterdir()) == ["big.bin", "kept.py"]
