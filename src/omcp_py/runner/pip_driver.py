# pip as the installer runs it: with the package cache, then byte-compiling what it
# installed on every CPU the installer has (pip compiles one file at a time, most of
# a large install). Run by sandbox_install.py in the installer container as
# `python3 -c SOURCE CACHE STAGE WORKERS PIP_ARGS...` (stdlib and pip, Python 3.8+);
# PIP_ARGS carry --no-compile. CACHE empty: no cache.
#
# CACHE is the shared cache volume, mounted read-only here: `sha256/<hex>` holds a
# file whose sha256 is <hex>, stored by the cache keeper (runner/cache_keeper.py)
# only after it found that file, with that hash, in the index's own listing. Before
# pip downloads a file whose link carries the index's sha256, an entry of that name
# is copied in, hashed on the way; an entry that does not hash to its name is
# refused and the file downloaded as usual. What pip downloads and the index's hash
# confirms is hard-linked into STAGE (on the package volume) with a line in
# STAGE/records.jsonl, for the keeper to check against the index and store.
#
# Anything in this container may have written STAGE (pip runs package code when it
# builds): the keeper trusts none of it. pip checks the hashes again itself.
import compileall
import hashlib
import json
import logging
import os
import re
import site
import sys

CACHE = STAGE = ""  # from the command line (main)
RECORDS = "records.jsonl"
HEX = re.compile(r"[0-9a-f]{64}")
FRAGMENT = re.compile(r"[#&]sha256=([0-9A-Fa-f]{64})")
CHUNK = 1024 * 1024

log = logging.getLogger("pip._internal.omcp_cache")


def index_sha256(link):
    """The sha256 the index gave for this link, or None."""
    hashes = getattr(link, "_hashes", None)
    value = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not value:
        found = FRAGMENT.search(getattr(link, "url", "") or "")
        value = found.group(1) if found else None
    value = (value or "").lower()
    return value if HEX.fullmatch(value) else None


def record(entry):
    with open(os.path.join(STAGE, RECORDS), "a") as f:
        f.write(json.dumps(entry) + "\n")


def from_cache(link, location):
    """(path, content type) of the cached copy of ``link`` put in ``location``, or None."""
    digest = index_sha256(link)
    if digest is None:
        return None
    try:
        fd = os.open(os.path.join(CACHE, "sha256", digest), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    name = os.path.basename(link.filename) or digest
    path = os.path.join(location, name)
    sha = hashlib.sha256()
    with os.fdopen(fd, "rb") as source, open(path, "wb") as copy:
        while True:
            chunk = source.read(CHUNK)
            if not chunk:
                break
            sha.update(chunk)
            copy.write(chunk)
    if sha.hexdigest() != digest:
        os.unlink(path)
        log.warning("Refused the cached %s: it does not match the index's sha256", name)
        record({"refused": digest})
        return None
    log.info("Using %s from the package cache (sha256 checked)", name)
    record({"hit": digest})
    return path, ""


def stage(link, path):
    """Offer a file pip downloaded to the keeper, when the index's hash confirms it."""
    digest = index_sha256(link)
    if digest is None:
        return
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            sha.update(chunk)
    if sha.hexdigest() != digest:
        return  # pip refuses it itself
    kept = os.path.join(STAGE, digest)
    if not os.path.exists(kept):
        try:
            os.link(path, kept)
        except OSError:
            return
    page = getattr(link, "comes_from", None)
    page = page if isinstance(page, str) else ""
    record({"new": digest, "filename": link.filename, "page": page})


def patch():
    """Wrap pip's downloaders; without them (another pip), pip runs as it is."""
    try:
        from pip._internal.network import download
    except ImportError:
        return False
    one = getattr(download, "Downloader", None)
    if not isinstance(one, type) or "__call__" not in vars(one):
        return False
    fetch_one = one.__call__

    def call_one(self, link, location):
        found = from_cache(link, location)
        if found is not None:
            return found
        result = fetch_one(self, link, location)
        stage(link, result[0])
        return result

    one.__call__ = call_one
    batch = getattr(download, "BatchDownloader", None)
    if batch is not None:
        fetch_batch = batch.__call__

        def call_batch(self, links, location):
            rest = []
            for link in links:
                found = from_cache(link, location)
                if found is not None:
                    yield link, found
                else:
                    rest.append(link)
            for link, result in fetch_batch(self, rest, location):
                stage(link, result[0])
                yield link, result

        batch.__call__ = call_batch
    return True


def compile_installed(workers):
    """Byte-compile the user site as pip would have (errors ignored, as pip does)."""
    target = site.getusersitepackages()
    if not os.path.isdir(target):
        return
    try:
        compileall.compile_dir(target, quiet=2, workers=workers)
    except (OSError, NotImplementedError, ValueError):  # no process pool here
        compileall.compile_dir(target, quiet=2)


def main():
    global CACHE, STAGE
    CACHE, STAGE, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if CACHE and not patch():
        sys.stderr.write("omcp_py: this pip cannot use the package cache; installing without\n")
    from pip._internal.cli.main import main as pip

    code = pip(sys.argv[4:])
    compile_installed(workers)
    return code


if __name__ == "__main__":
    sys.exit(main())
