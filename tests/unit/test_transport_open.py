"""Whether the runner's connection is still open, told without reading from it."""

import socket

from omcp_py.runner.client import transport_open


def test_open_until_the_peer_closes_and_nothing_is_consumed() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert transport_open(ours)
        theirs.sendall(b"frame")
        assert transport_open(ours)
        assert ours.recv(16) == b"frame"  # the peek took nothing
        assert ours.getblocking()  # nor changed the mode a reader relies on
        theirs.close()
        assert not transport_open(ours)


def test_a_closed_socket_or_one_without_a_descriptor() -> None:
    ours, theirs = socket.socketpair()
    theirs.close()
    ours.close()
    assert not transport_open(ours)  # its fileno() is -1

    class Pipe:  # a Windows named pipe has no descriptor to peek on
        def fileno(self) -> int:
            raise OSError("no fileno")

    assert transport_open(Pipe())
