"""The egress filter: a small forward proxy, the only way out of the installer's network.

It runs in its own hardened container (``python3 -I -c`` this file, like PID 1), on
two networks: the internal one the installer sits on (no gateway, no route out) and
INSTALLER_NETWORK. It accepts ``CONNECT host:port`` (https) and absolute-form HTTP
requests (http indexes), and opens a connection only to a host and port on its
allow-list. It resolves names itself and refuses an answer in loopback, link-local
(the cloud metadata endpoints), unspecified or multicast space unless the operator
configured that very address. Behind PACKAGE_PROXY it chains to that proxy, which
then resolves. Everything it does is one line on stderr.

Standard library only, Python 3.8+: the image's python3 runs it.
"""

import errno
import ipaddress
import json
import select
import socket
import sys
import threading

HEAD_LIMIT = 16 * 1024
HEAD_SECONDS = 15.0
CONNECT_SECONDS = 15.0
IDLE_SECONDS = 300.0
MAX_CONNECTIONS = 48  # each is a thread; the container's pids limit is above this
CHUNK = 64 * 1024
# Metadata services outside link-local space (AWS IPv6, Alibaba).
METADATA = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}


def split_target(target):
    """(host, port) of ``host:port`` or ``[v6]:port``; None when it is not that."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None
    port = int(port)
    if not 0 < port < 65536:
        return None
    return host.lower().rstrip("."), port


def split_absolute(url):
    """(host, port, origin-form path) of an ``http://`` URL; None otherwise."""
    if not url.lower().startswith("http://"):
        return None
    rest = url[7:]
    authority, slash, path = rest.partition("/")
    if "@" in authority or not authority:
        return None
    if authority.startswith("[") or ":" in authority.rpartition("]")[2]:
        found = split_target(authority)
    else:
        found = split_target(authority + ":80")
    if found is None:
        return None
    return found[0], found[1], "/" + path if slash else "/"


def forbidden(address):
    """Why an address is never a destination of its own accord, or None."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return "a cloud metadata address"
    for test, why in (
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local (metadata endpoints live there)"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_multicast, "multicast"),
    ):
        if test:
            return why
    return None


def is_address(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Rules:
    """The allow-list: host:port pairs, and the addresses the operator named."""

    def __init__(self, allow, upstream=None, upstream_auth=None):
        self.allow = set()
        for entry in allow:
            found = split_target(entry)
            if found is not None:
                self.allow.add(found)
        self.pinned = {h for h, _ in self.allow if is_address(h)}
        self.upstream = split_target(upstream) if upstream else None
        self.upstream_auth = upstream_auth

    def refusal(self, host, port):
        """Why (host, port) may not be reached, or None."""
        if (host, port) not in self.allow:
            return "not on the allow-list (%s)" % ", ".join(
                "%s:%d" % pair for pair in sorted(self.allow)
            )
        return None

    def addresses(self, host, port, resolve=socket.getaddrinfo):
        """The addresses to try for an allowed (host, port); raises ValueError why not."""
        if is_address(host):
            return [host]  # the operator wrote this very address
        try:
            infos = resolve(host, port, 0, socket.SOCK_STREAM)
        except OSError as exc:
            raise ValueError("%s does not resolve (%s)" % (host, exc)) from None
        found = []
        for info in infos:
            address = info[4][0]
            why = forbidden(address)
            if why is not None and address not in self.pinned:
                raise ValueError("%s resolves to %s, which is %s" % (host, address, why))
            if address not in found:
                found.append(address)
        if not found:
            raise ValueError("%s has no address" % host)
        return found


def log(line):
    try:
        sys.stderr.write(line[:500].replace("\n", " ") + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def read_head(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > HEAD_LIMIT:
            return None, b""
        chunk = conn.recv(4096)
        if not chunk:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


# What pip prints of a refused CONNECT ("Tunnel connection failed: 403 ...").
PHRASES = {
    400: b"Bad request to the omcp_py egress filter",
    403: b"Refused by the omcp_py egress filter",
    502: b"Unreachable from the omcp_py egress filter",
}


def answer(conn, status, reason):
    body = (reason + "\n").encode("utf-8", "replace")
    try:
        conn.sendall(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, PHRASES[status], len(body)) + body
        )
    except OSError:
        pass


def splice(a, b):
    sockets = [a, b]
    while True:
        ready = select.select(sockets, [], [], IDLE_SECONDS)[0]
        if not ready:
            return
        for sock in ready:
            data = sock.recv(CHUNK)
            if not data:
                return
            (b if sock is a else a).sendall(data)


def open_to(rules, host, port):
    """A connected socket toward (host, port), through the upstream proxy if any."""
    if rules.upstream is not None:
        return socket.create_connection(rules.upstream, timeout=CONNECT_SECONDS), "upstream"
    last = None
    for address in rules.addresses(host, port):
        try:
            return socket.create_connection((address, port), timeout=CONNECT_SECONDS), address
        except OSError as exc:
            last = exc
    raise OSError("no address of %s:%d answered (%s)" % (host, port, last))


def handle(conn, peer, rules):
    conn.settimeout(HEAD_SECONDS)
    head, rest = read_head(conn)
    if head is None:
        return answer(conn, 400, "no request head within %d bytes" % HEAD_LIMIT)
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return answer(conn, 400, "not an HTTP request")
    method, target, version = parts
    if method == "CONNECT":
        found = split_target(target)
        path = None
    else:
        found = split_absolute(target)
        path = found[2] if found else None
    if found is None:
        log("refuse %s %s from %s: not a proxy request" % (method, target[:200], peer))
        return answer(conn, 400, "only CONNECT host:port and http:// URLs go through here")
    host, port = found[0], found[1]
    why = rules.refusal(host, port)
    if why is None:
        try:
            upstream, address = open_to(rules, host, port)
        except ValueError as exc:
            why = str(exc)
        except OSError as exc:
            log("fail %s %s:%d from %s: %s" % (method, host, port, peer, exc))
            return answer(conn, 502, "cannot reach %s:%d: %s" % (host, port, exc))
    if why is not None:
        log("refuse %s %s:%d from %s: %s" % (method, host, port, peer, why))
        return answer(conn, 403, "%s:%d is refused: %s" % (host, port, why))
    log("allow %s %s:%d from %s via %s" % (method, host, port, peer, address))
    with upstream:
        upstream.settimeout(None)
        conn.settimeout(None)
        if method == "CONNECT" and rules.upstream is None:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            # Forwarded as a request: to the origin in origin-form, one request per
            # connection; to the user's proxy as it came, with its credentials.
            first = lines[0] if rules.upstream else "%s %s %s" % (method, path, version)
            dropped = ("proxy-connection:", "connection:", "keep-alive:")
            if rules.upstream is None:
                dropped += ("proxy-authorization:",)
            if rules.upstream_auth:
                dropped += ("proxy-authorization:",)
            kept = [line for line in lines[1:] if not line.lower().startswith(dropped)]
            if rules.upstream_auth:
                kept.append("Proxy-Authorization: " + rules.upstream_auth)
            if method != "CONNECT":
                kept.append("Connection: close")
            request = "\r\n".join([first, *kept, "", ""])
            upstream.sendall(request.encode("latin-1"))
        if rest:
            upstream.sendall(rest)
        splice(conn, upstream)


def serve(conn, peer, rules, slots):
    try:
        with conn:
            handle(conn, peer, rules)
    except Exception as exc:  # one connection's trouble is not the filter's
        log("error from %s: %s" % (peer, exc))
    finally:
        slots.release()


def host_unreachable(address, port=9, timeout=5.0):
    """True when nothing answers for ``address`` on its link (no ARP reply): the
    engine gave the internal network's bridge no address, so the host's services are
    out of reach. Refused or accepted means the host is there; a timeout proves
    nothing (a firewall may drop this port only)."""
    try:
        socket.create_connection((address, port), timeout=timeout).close()
    except OSError as exc:
        return exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)
    return False


def main():
    settings = json.loads(sys.argv[1])
    probe = settings.get("probe")
    if probe and not host_unreachable(probe):
        log("exposed: the host answers at %s on the internal network" % probe)
        sys.exit(3)
    rules = Rules(settings["allow"], settings.get("upstream"), settings.get("upstream_auth"))
    listener = socket.create_server(("0.0.0.0", int(settings.get("port", 3128))), backlog=64)
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
    log("listening; allowed: %s" % ", ".join("%s:%d" % pair for pair in sorted(rules.allow)))
    while True:
        conn, peer = listener.accept()
        if not slots.acquire(blocking=False):
            conn.close()
            continue
        peer = "%s:%d" % peer[:2]
        threading.Thread(target=serve, args=(conn, peer, rules, slots), daemon=True).start()


if __name__ == "__main__":
    main()
