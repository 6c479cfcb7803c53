"""The package cache's two programs, without Docker or pip: the installer's side
(runner/pip_driver.py: use an entry only when it hashes to the index's sha256, stage
downloads the index's hash confirms) and the keeper (runner/cache_keeper.py: what a
hostile stage may hold, the index's listing, storing, eviction)."""

import functools
import hashlib
import http.server
import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from omcp_py.runner import cache_keeper, pip_driver

GOOD = b"the wheel the index lists"
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()
NAME = "demo-1.0-py3-none-any.whl"


def _link(digest: str | None, name: str = NAME, page: str = "http://index/simple/demo/"):
    url = f"http://files/{name}" + (f"#sha256={digest}" if digest else "")
    return SimpleNamespace(url=url, filename=name, comes_from=page)


@pytest.fixture
def driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "cache" / "sha256").mkdir(parents=True)
    (tmp_path / "stage").mkdir()
    monkeypatch.setattr(pip_driver, "CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pip_driver, "STAGE", str(tmp_path / "stage"))
    return tmp_path


def _records(stage: Path) -> list[dict]:
    path = stage / "records.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_index_hash_comes_from_the_link_or_its_fragment() -> None:
    assert pip_driver.index_sha256(_link(GOOD_SHA.upper())) == GOOD_SHA
    with_hashes = SimpleNamespace(_hashes={"sha256": GOOD_SHA}, url="http://x/a.whl")
    assert pip_driver.index_sha256(with_hashes) == GOOD_SHA
    assert pip_driver.index_sha256(_link(None)) is None
    assert pip_driver.index_sha256(SimpleNamespace(_hashes={"md5": "ab"}, url="x#md5=ab")) is None


def test_an_entry_is_used_only_when_it_hashes_to_the_index_sha256(driver: Path) -> None:
    entry = driver / "cache" / "sha256" / GOOD_SHA
    location = driver / "download"
    location.mkdir()
    entry.write_bytes(GOOD)
    path, _ = pip_driver.from_cache(_link(GOOD_SHA), str(location))
    assert Path(path).read_bytes() == GOOD and Path(path).name == NAME
    Path(path).unlink()

    entry.write_bytes(b"tampered")
    assert pip_driver.from_cache(_link(GOOD_SHA), str(location)) is None
    assert list(location.iterdir()) == []  # the bad copy is not left for pip
    assert pip_driver.from_cache(_link(None), str(location)) is None  # no hash: no cache
    assert _records(driver / "stage") == [{"hit": GOOD_SHA}, {"refused": GOOD_SHA}]

    entry.unlink()
    entry.symlink_to(driver / "elsewhere")
    (driver / "elsewhere").write_bytes(GOOD)
    assert pip_driver.from_cache(_link(GOOD_SHA), str(location)) is None  # no link followed


def test_only_downloads_the_index_hash_confirms_are_staged(driver: Path) -> None:
    download = driver / NAME
    download.write_bytes(GOOD)
    pip_driver.stage(_link(None), str(download))
    pip_driver.stage(_link(hashlib.sha256(b"other").hexdigest()), str(download))
    assert _records(driver / "stage") == []
    pip_driver.stage(_link(GOOD_SHA), str(download))
    assert (driver / "stage" / GOOD_SHA).read_bytes() == GOOD
    assert _records(driver / "stage") == [
        {"new": GOOD_SHA, "filename": NAME, "page": "http://index/simple/demo/"}
    ]


# -- the keeper ------------------------------------------------------------------------


def test_hostile_records_are_dropped(tmp_path: Path) -> None:
    lines = [
        b"not json",
        b"[1, 2]",
        json.dumps({"new": "ab", "filename": NAME, "page": "p"}).encode(),
        json.dumps({"new": GOOD_SHA, "filename": "../../etc/passwd", "page": "p"}).encode(),
        json.dumps({"new": GOOD_SHA, "filename": NAME, "page": 7}).encode(),
        json.dumps({"hit": "x" * 64}).encode(),
        json.dumps({"new": GOOD_SHA, "filename": NAME, "page": "http://i/simple/demo/"}).encode(),
        json.dumps({"hit": GOOD_SHA}).encode(),
    ]
    (tmp_path / "records.jsonl").write_bytes(b"\n".join(lines) + b"\n" + b"x" * 2_000_000)
    new, used = cache_keeper.read_records(str(tmp_path))
    assert new == {GOOD_SHA: (NAME, "http://i/simple/demo/")}
    assert used == {GOOD_SHA}


def test_only_project_pages_of_the_configured_indexes_are_fetched() -> None:
    indexes = ["https://pypi.org/simple", "http://10.0.0.5:8080/simple/"]
    page = cache_keeper.index_page
    assert page("https://pypi.org/simple/pandas/", indexes) == "https://pypi.org/simple/pandas/"
    assert page("http://10.0.0.5:8080/simple/demo", indexes) == "http://10.0.0.5:8080/simple/demo/"
    for bad in (
        "https://pypi.org.evil.example/simple/pandas/",
        "https://pypi.org/simple/a/b/",
        "https://pypi.org/simple/",
        "https://pypi.org/simple/pandas/?x=1",
        "http://169.254.169.254/latest/",
        "",
    ):
        assert page(bad, indexes) is None, bad


def _answer(body: bytes, kind: str):
    class Answer:
        def __init__(self) -> None:
            self.headers = {"Content-Type": kind}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, size: int) -> bytes:
            return body[:size]

    return SimpleNamespace(open=lambda request, timeout: Answer())


def test_the_listing_is_read_from_pep_691_json_and_pep_503_html() -> None:
    as_json = json.dumps(
        {"files": [{"filename": NAME, "hashes": {"sha256": GOOD_SHA.upper()}}, {"x": 1}, None]}
    ).encode()
    found = cache_keeper.listing(_answer(as_json, cache_keeper.JSON_TYPE), "http://i/simple/d/")
    assert found == {NAME: GOOD_SHA}
    as_html = (
        f'<html><a href="../../files/{NAME}#sha256={GOOD_SHA}">x</a>'
        f'<a href="other-1.0.tar.gz">no hash</a><a>none</a></html>'
    ).encode()
    found = cache_keeper.listing(_answer(as_html, "text/html"), "http://i/simple/d/")
    assert found == {NAME: GOOD_SHA}
    huge = b" " * (cache_keeper.MAX_PAGE_BYTES + 1)
    with pytest.raises(ValueError, match="larger than"):
        cache_keeper.listing(_answer(huge, "text/html"), "http://i/simple/d/")


def test_a_staged_file_is_stored_only_when_it_hashes_to_its_name(tmp_path: Path) -> None:
    stage, cache = tmp_path / "stage", tmp_path / "cache"
    stage.mkdir()
    (cache / "sha256").mkdir(parents=True)
    (stage / GOOD_SHA).write_bytes(b"not what the index lists")
    assert not cache_keeper.store(str(stage), str(cache), GOOD_SHA, 1 << 20)
    (stage / GOOD_SHA).unlink()
    (stage / GOOD_SHA).symlink_to(tmp_path / "target")
    (tmp_path / "target").write_bytes(GOOD)
    assert not cache_keeper.store(str(stage), str(cache), GOOD_SHA, 1 << 20)
    (stage / GOOD_SHA).unlink()
    (stage / GOOD_SHA).write_bytes(GOOD)
    assert not cache_keeper.store(str(stage), str(cache), GOOD_SHA, 4)  # larger than the cache
    assert cache_keeper.store(str(stage), str(cache), GOOD_SHA, 1 << 20)
    entry = cache / "sha256" / GOOD_SHA
    assert entry.read_bytes() == GOOD
    assert entry.stat().st_mode & 0o777 == 0o444
    assert [p.name for p in (cache / "sha256").iterdir()] == [GOOD_SHA]


def test_the_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    folder = tmp_path / "sha256"
    folder.mkdir()
    for age, name in enumerate(("c", "b", "a")):
        (folder / name).write_bytes(b"x" * 100)
        os.utime(folder / name, (1000 - age, 1000 - age))
    (folder / ".half.part").write_bytes(b"x")
    assert cache_keeper.evict(str(tmp_path), 200) == (1, 200, 2)
    assert sorted(p.name for p in folder.iterdir()) == ["b", "c"]


class _Index(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_the_keeper_stores_what_the_index_lists_and_refuses_the_rest(tmp_path, capsys) -> None:
    """main() against a real index over HTTP: one genuine file, one whose content is not
    the listed one, one the index does not list, one claimed for a page elsewhere."""
    (tmp_path / "index" / "simple" / "demo").mkdir(parents=True)
    forged = [b"package code wrote this %d" % n for n in range(3)]
    forged_sha = [hashlib.sha256(data).hexdigest() for data in forged]
    (tmp_path / "index" / "simple" / "demo" / "index.html").write_text(
        f'<a href="{NAME}#sha256={GOOD_SHA}">{NAME}</a>'
        f'<a href="demo-1.0.tar.gz#sha256={GOOD_SHA}">sdist</a>'
    )
    handler = functools.partial(_Index, directory=str(tmp_path / "index"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/simple/"
    stage, cache = tmp_path / "stage", tmp_path / "cache"
    stage.mkdir()
    (stage / GOOD_SHA).write_bytes(GOOD)
    for data, digest in zip(forged, forged_sha, strict=True):
        (stage / digest).write_bytes(data)
    records = [
        {"new": GOOD_SHA, "filename": NAME, "page": base + "demo/"},
        {"new": forged_sha[0], "filename": "demo-1.0.tar.gz", "page": base + "demo/"},
        {"new": forged_sha[1], "filename": "unlisted-1.0.tar.gz", "page": base + "demo/"},
        {"new": forged_sha[2], "filename": "x-1.0.tar.gz", "page": "http://elsewhere/simple/x/"},
    ]
    (stage / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    argv = ["-c", str(cache), str(stage), str(1 << 20), json.dumps([base]), ""]
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("sys.argv", argv)
            cache_keeper.main()
    finally:
        httpd.shutdown()
    said = json.loads(capsys.readouterr().out)
    assert said["stored"] == 1 and said["files"] == 1
    assert [p.name for p in (cache / "sha256").iterdir()] == [GOOD_SHA]
    assert sorted(said["refused"]) == [
        "demo-1.0.tar.gz: not in the index's listing with that sha256",
        "unlisted-1.0.tar.gz: not in the index's listing with that sha256",
        "x-1.0.tar.gz: not from a project page of the index",
    ]
    assert not stage.exists()


def test_entries_the_server_saw_used_outlive_older_unused_ones(tmp_path, capsys) -> None:
    """Installers cannot write the cache: the uses they report reach the keeper through
    the server, which passes them on (USED); eviction then spares those entries."""
    folder = tmp_path / "cache" / "sha256"
    folder.mkdir(parents=True)
    used, unused = "a" * 64, "b" * 64
    for name in (used, unused):
        (folder / name).write_bytes(b"x" * 100)
        os.utime(folder / name, (1000, 1000))
    stage = tmp_path / "stage"
    stage.mkdir()
    argv = ["-c", str(tmp_path / "cache"), str(stage), "150", "[]", "", json.dumps([used, "../x"])]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", argv)
        cache_keeper.main()
    said = json.loads(capsys.readouterr().out)
    assert (said["evicted"], said["files"]) == (1, 1)
    assert [p.name for p in folder.iterdir()] == [used]
