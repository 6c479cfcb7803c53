# The package cache's keeper: the only writer of the shared cache volume. Stdlib only,
# Python 3.8+; run after an install as `python3 -I -c SOURCE CACHE STAGE SIZE INDEXES
# PROXY USED` in a container of its own (the installer's hardening and egress filter, no
# package code, no pip), with the cache volume read-write at CACHE and the sandbox's
# package volume at its parent of STAGE.
#
# STAGE was written in the installer, where package code may run: every record and
# file there is hostile. A staged file is stored as CACHE/sha256/<hex> only when the
# index's own listing page (fetched here, from an index URL of the server's
# settings, never a URL from STAGE) names a file of that name with that sha256, and
# the file hashes to it. Then the entries least recently stored or used (USED: those
# installs took since the last keeper, as the server heard it) go until the cache
# holds at most SIZE bytes, and STAGE goes.
#
# stdout: one line of JSON: {"stored", "refused", "evicted", "bytes", "files"}.
import fcntl
import hashlib
import html.parser
import json
import os
import re
import shutil
import ssl
import stat
import sys
import urllib.parse
import urllib.request

HEX = re.compile(r"[0-9a-f]{64}")
FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!-]{0,250}")
PROJECT = re.compile(r"[A-Za-z0-9._-]{1,200}/?")
MAX_RECORDS = 4096
MAX_RECORDS_BYTES = 1024 * 1024
MAX_PAGE_BYTES = 32 * 1024 * 1024
CHUNK = 1024 * 1024
JSON_TYPE = "application/vnd.pypi.simple.v1+json"


def read_records(stage):
    """{sha256: (filename, page)} of the staged files, and the sha256 of the hits."""
    new, used = {}, set()
    try:
        with open(os.path.join(stage, "records.jsonl"), "rb") as f:
            lines = f.read(MAX_RECORDS_BYTES).splitlines()[:MAX_RECORDS]
    except OSError:
        return new, used
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        digest = entry.get("new") or entry.get("hit")
        if not isinstance(digest, str) or not HEX.fullmatch(digest):
            continue
        if "hit" in entry:
            used.add(digest)
            continue
        filename, page = entry.get("filename"), entry.get("page")
        if isinstance(filename, str) and FILENAME.fullmatch(filename) and isinstance(page, str):
            new[digest] = (filename, page)
    return new, used


def index_page(page, indexes):
    """``page`` when it is a project page of one of ``indexes``, else None."""
    for index in indexes:
        base = index if index.endswith("/") else index + "/"
        if page.startswith(base) and PROJECT.fullmatch(page[len(base) :]):
            return page if page.endswith("/") else page + "/"
    return None


class Anchors(html.parser.HTMLParser):
    """The href of each anchor of a PEP 503 page."""

    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [value for key, value in attrs if key == "href" and value]


def listing(opener, page):
    """{filename: sha256} as the index lists the project's files (PEP 691 or 503)."""
    request = urllib.request.Request(page, headers={"Accept": JSON_TYPE + ", text/html;q=0.1"})
    with opener.open(request, timeout=30) as answer:
        body = answer.read(MAX_PAGE_BYTES + 1)
        kind = answer.headers.get("Content-Type", "")
    if len(body) > MAX_PAGE_BYTES:
        raise ValueError("the index page is larger than %d bytes" % MAX_PAGE_BYTES)
    found = {}
    if kind.split(";")[0].strip() == JSON_TYPE:
        answer = json.loads(body)
        for item in answer.get("files") or [] if isinstance(answer, dict) else []:
            hashes = item.get("hashes") if isinstance(item, dict) else None
            digest = hashes.get("sha256") if isinstance(hashes, dict) else None
            if isinstance(digest, str) and isinstance(item.get("filename"), str):
                found[item["filename"]] = digest.lower()
        return found
    parser = Anchors()
    parser.feed(body.decode("utf-8", "replace"))
    for href in parser.hrefs:
        url, _, fragment = href.partition("#")
        digest = urllib.parse.parse_qs(fragment).get("sha256", [""])[0].lower()
        name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
        if digest:
            found[name] = digest
    return found


def store(stage, cache, digest, limit):
    """Copy a staged file into the cache when it hashes to ``digest``."""
    try:
        fd = os.open(os.path.join(stage, digest), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    part = os.path.join(cache, "sha256", ".%s.%d.part" % (digest, os.getpid()))
    sha = hashlib.sha256()
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return False
        with open(part, "wb") as copy:
            for chunk in iter(lambda: source.read(CHUNK), b""):
                sha.update(chunk)
                copy.write(chunk)
    if sha.hexdigest() != digest:
        os.unlink(part)
        return False
    os.chmod(part, 0o444)
    os.rename(part, os.path.join(cache, "sha256", digest))
    return True


def evict(cache, limit):
    """Remove the least recently stored or used entries past ``limit`` bytes."""
    entries = []
    folder = os.path.join(cache, "sha256")
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        info = os.lstat(path)
        if name.startswith("."):  # a copy another keeper left half-done
            os.unlink(path)
            continue
        entries.append((info.st_mtime, info.st_size, path))
    entries.sort()
    total = sum(size for _, size, _ in entries)
    evicted = 0
    while entries and total > limit:
        _, size, path = entries.pop(0)
        os.unlink(path)
        total -= size
        evicted += 1
    return evicted, total, len(entries)


def opener_for(proxy):
    context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None)
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy, "https": proxy} if proxy else {}),
        urllib.request.HTTPSHandler(context=context),
    )


def main():
    cache, stage, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    indexes, opener = json.loads(sys.argv[4]), opener_for(sys.argv[5])
    os.makedirs(os.path.join(cache, "sha256"), exist_ok=True)
    new, used = read_records(stage)
    if len(sys.argv) > 6:
        told = json.loads(sys.argv[6])
        used |= {d for d in told if isinstance(d, str) and HEX.fullmatch(d)}
    pages = {}
    for digest, (filename, page) in new.items():
        page = index_page(page, indexes)
        if page is not None:
            pages.setdefault(page, []).append((digest, filename))
    stored, refused = 0, []
    with open(os.path.join(cache, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another sandbox's keeper waits
        for page, files in pages.items():
            try:
                listed = listing(opener, page)
            except Exception as exc:  # the index is unreachable or answers nonsense
                refused += ["%s: %s" % (name, str(exc)[:200]) for _, name in files]
                continue
            for digest, filename in files:
                if listed.get(filename) == digest and store(stage, cache, digest, limit):
                    stored += 1
                else:
                    refused.append("%s: not in the index's listing with that sha256" % filename)
        refused += [
            "%s: not from a project page of the index" % filename
            for digest, (filename, page) in new.items()
            if index_page(page, indexes) is None
        ]
        for digest in used:  # least recently used go first
            try:
                os.utime(os.path.join(cache, "sha256", digest))
            except OSError:
                pass
        evicted, total, files = evict(cache, limit)
    shutil.rmtree(stage, ignore_errors=True)
    print(
        json.dumps(
            {
                "stored": stored,
                "refused": refused[:20],
                "evicted": evicted,
                "bytes": total,
                "files": files,
            }
        )
    )


if __name__ == "__main__":
    main()
