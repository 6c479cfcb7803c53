# Runs pip in an installer container (never in a sandbox). Stdlib only, Python 3.8+;
# started as `python3 -I -c SOURCE TARGET LIMIT CACHE WORKERS DRIVER PIP_ARGS...` by the
# engine, as the
# sandbox user, with the sandbox's package volume mounted read-write at TARGET, which
# is also PYTHONUSERBASE: `pip install --user` writes there, and sees (so does not
# fetch again, and upgrades or downgrades properly) what earlier installs put there.
#
# LIMIT bounds the bytes the volume may hold (PACKAGES_DISK_LIMIT). Before pip runs,
# the volume is kept as it is in a tree of hard links (no data copied: pip never
# rewrites a file in place, it unlinks first); past the limit pip is killed and the
# volume put back from that tree. A tree left by an installer killed from outside (a
# timeout) is put back by the next install first.
#
# DRIVER is the source of runner/pip_driver.py, which runs pip with the package cache
# mounted (read-only) at CACHE ('': no cache) and byte-compiles with WORKERS processes.
# What it offers the cache keeper waits in STAGE on the volume (within the limit) until
# the keeper (or the next install) takes it away.
#
# stdout: pip's output (its head, then a rolling tail: bounded whatever pip prints),
# then one line `MARKER {json}` with pip's exit code and the distributions now there.
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import threading
import time

MARKER = "@@omcp-install-result@@"
HEAD = 16 * 1024
TAIL = 48 * 1024
BEFORE = ".omcp-before"  # the volume as it was, in hard links
TMP = ".omcp-tmp"
STAGE = ".omcp-stage"  # see runner/pip_driver.py
USED_REPORTED = 1000
WATCH_SECONDS = 0.5


def write(data):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def disk_used(top, skip=()):
    """Bytes the tree takes on disk, each file once however many links it has (the
    top directory's entries in ``skip`` left out)."""
    seen = set()
    total = 0
    for root, dirs, files in os.walk(top):
        if root == top:
            dirs[:] = [name for name in dirs if name not in skip]
            files = [name for name in files if name not in skip]
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                total += st.st_blocks * 512
    return total


def snapshot(target):
    """Keep the volume as it is: every file hard-linked under BEFORE."""
    before = os.path.join(target, BEFORE)
    os.makedirs(before)
    for entry in os.listdir(target):
        if entry in (BEFORE, TMP, STAGE):
            continue
        source, kept = os.path.join(target, entry), os.path.join(before, entry)
        if os.path.isdir(source) and not os.path.islink(source):
            shutil.copytree(source, kept, symlinks=True, copy_function=os.link)
        else:
            os.link(source, kept, follow_symlinks=False)


def restore(target):
    """Put the volume back as BEFORE holds it, and drop BEFORE."""
    before = os.path.join(target, BEFORE)
    for entry in os.listdir(target):
        if entry == BEFORE:
            continue
        path = os.path.join(target, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    for entry in os.listdir(before):
        os.rename(os.path.join(before, entry), os.path.join(target, entry))
    os.rmdir(before)


class Watch:
    """Stops pip once the volume holds more than the limit."""

    def __init__(self, target, limit, proc):
        self.target, self.limit, self.proc = target, limit, proc
        self.exceeded = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.proc.poll() is None:
            used = disk_used(self.target)
            if self.limit and used > self.limit:
                self.exceeded = used
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # pip and its build processes
                except OSError:
                    pass
                return
            time.sleep(WATCH_SECONDS)


def pip_command(cache, workers, driver, target):
    stage = os.path.join(target, STAGE)
    if cache:
        os.makedirs(stage)
    return [sys.executable, "-c", driver, cache, stage, workers]


def cache_report(target):
    """How many files came from the cache, were refused there, or wait to be stored;
    and the cache entries used (for the keeper's least-recently-used order)."""
    found, used = {"hit": 0, "refused": 0, "new": 0}, []
    try:
        with open(os.path.join(target, STAGE, "records.jsonl"), "rb") as f:
            lines = f.read(1024 * 1024).splitlines()
    except OSError:
        return found, used
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        for key in found:
            if isinstance(entry, dict) and key in entry:
                found[key] += 1
                if key == "hit" and len(used) < USED_REPORTED:
                    used.append(entry[key])
    return found, used


def run_pip(pip_args, tmp, target, limit, command):
    # pip downloads and unpacks under TMPDIR: on the volume, not in memory (tmpfs).
    env = dict(os.environ, TMPDIR=tmp)
    command = command + ["install", "--user"] + pip_args
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    watch = Watch(target, limit, proc)
    head_left = HEAD
    tail = bytearray()
    dropped = 0
    while True:
        data = os.read(proc.stdout.fileno(), 65536)
        if not data:
            break
        if head_left:
            chunk = data[:head_left]
            write(chunk)
            head_left -= len(chunk)
            data = data[len(chunk) :]
        if data:
            tail += data
            excess = len(tail) - TAIL
            if excess > 0:
                dropped += excess
                del tail[:excess]
    code = proc.wait()
    watch.thread.join()
    if dropped:
        write(("\n[... %d bytes of pip's log left out ...]\n" % dropped).encode())
    write(bytes(tail))
    return code, watch.exceeded


def read_metadata(path):
    name = version = None
    try:
        with open(os.path.join(path, "METADATA"), encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                if key == "Name":
                    name = value.strip()
                elif key == "Version":
                    version = value.strip()
    except OSError:
        pass
    return name, version


def distributions():
    """name==version of each distribution in the user site."""
    user_site = site.getusersitepackages()
    if not os.path.isdir(user_site):
        return []
    result = []
    for entry in os.listdir(user_site):
        if entry.endswith(".dist-info"):
            name, version = read_metadata(os.path.join(user_site, entry))
            if name and version:
                result.append("%s==%s" % (name, version))
    return sorted(result, key=str.lower)


def main():
    target, limit = sys.argv[1], int(sys.argv[2])
    cache, workers, driver = sys.argv[3], sys.argv[4], sys.argv[5]
    tmp = os.path.join(target, TMP)
    for left in (TMP, STAGE):  # left by an installer that was killed
        shutil.rmtree(os.path.join(target, left), ignore_errors=True)
    if os.path.isdir(os.path.join(target, BEFORE)):
        restore(target)  # that installer's half-done work goes too
    snapshot(target)
    os.makedirs(tmp)
    exceeded = 0
    try:
        command = pip_command(cache, workers, driver, target)
        code, exceeded = run_pip(sys.argv[6:], tmp, target, limit, command)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if limit and not exceeded:
        # pip may finish between two looks of the watch: what it left is measured too.
        used = disk_used(target, skip=(BEFORE,))
        if used > limit:
            exceeded = used
    if exceeded:
        restore(target)
    else:
        shutil.rmtree(os.path.join(target, BEFORE), ignore_errors=True)
    counts, used = cache_report(target)
    result = {"exit_code": code, "installed": distributions(), "cache": counts}
    result["cache_used"] = used
    if exceeded:
        result["disk_exceeded"] = exceeded
    write(("\n%s %s\n" % (MARKER, json.dumps(result))).encode())


if __name__ == "__main__":  # run as `python3 -I -c SOURCE`; imported, it only defines
    main()
