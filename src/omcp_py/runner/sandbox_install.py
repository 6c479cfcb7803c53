# Runs pip in an installer container (never in a sandbox). Stdlib only, Python 3.8+;
# started as `python3 -I -c SOURCE TARGET PIP_ARGS...` by the engine, as the sandbox
# user, with the sandbox's package volume mounted read-write at TARGET, which is
# also PYTHONUSERBASE: `pip install --user` writes there, and sees (so does not fetch
# again, and upgrades or downgrades properly) what earlier installs put there.
#
# stdout: pip's output (its head, then a rolling tail: bounded whatever pip prints),
# then one line `MARKER {json}` with pip's exit code and the distributions now there.
import json
import os
import shutil
import site
import subprocess
import sys

MARKER = "@@omcp-install-result@@"
HEAD = 16 * 1024
TAIL = 48 * 1024


def write(data):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def run_pip(pip_args, tmp):
    # pip downloads and unpacks under TMPDIR: on the volume, not in memory (tmpfs).
    env = dict(os.environ, TMPDIR=tmp)
    command = [sys.executable, "-m", "pip", "install", "--user"] + pip_args
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
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
    if dropped:
        write(("\n[... %d bytes of pip's log left out ...]\n" % dropped).encode())
    write(bytes(tail))
    return code


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
    target = sys.argv[1]
    tmp = os.path.join(target, ".omcp-tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an installer that was killed
    os.makedirs(tmp)
    try:
        code = run_pip(sys.argv[2:], tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"exit_code": code, "installed": distributions()}
    write(("\n%s %s\n" % (MARKER, json.dumps(result))).encode())


if __name__ == "__main__":  # run as `python3 -I -c SOURCE`; imported, it only defines
    main()
