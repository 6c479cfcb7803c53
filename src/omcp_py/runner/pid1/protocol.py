"""The frames between the host and PID 1 of a sandbox: their layout, their kinds, and
the limits both sides keep. Shared: the host's client imports it, and it is the first
part of the program PID 1 runs (``runner.assemble``).

The host talks to PID 1 over the container's own stdin and stdout (docker attach), one
request at a time. Frames both ways: kind (1 byte), request id (4 bytes), length (4
bytes, big-endian), payload.

host -> PID 1:
    EXECUTE   a JSON line {"timeout", "limit", "stateful", "guard", "images"}, then
              the code
    CANCEL    stop the execution under way with this request id now
    RESET     end the stateful interpreter
    FILES     a JSON line {"op": "put" | "get" | "list", "path", "max"}, then the
              content to put
    SYNC      on each new connection: the answer echoes the payload
PID 1 -> host:
    STDOUT, STDERR            the head of the code's stdout / stderr, as it arrives
    STDOUT_TAIL, STDERR_TAIL  their tails, at the end
    PROGRESS                  progress of an execution (JSON), every PROGRESS_INTERVAL
    DATA                      the content of a file got
    RESULT                    the result (JSON): always the last frame of a request
"""

import struct

FRAME = struct.Struct(">cII")

EXECUTE = b"x"
CANCEL = b"c"
RESET = b"z"
FILES = b"f"
SYNC = b"s"

STDOUT = b"o"
STDERR = b"e"
STDOUT_TAIL = b"O"
STDERR_TAIL = b"E"
PROGRESS = b"p"
DATA = b"d"
RESULT = b"r"

READ_CHUNK = 65536
# Clients that extend their deadline on progress need some well within 5 seconds.
PROGRESS_INTERVAL = 2.0
SYNC_ECHO = 64  # bytes of a sync's payload echoed back

# list_files: entries at most, bytes of names and link targets at most (the answer
# must fit the host's frame limit), characters of a link target shown.
LIST_LIMIT = 1000
LIST_BYTES = 512 * 1024
TARGET_CHARS = 512

# The code's user, unless PID 1's argv says otherwise.
CODE_UID = 1000
CODE_GID = 1000


def frame(kind, rid, payload):
    """One frame, header and payload."""
    return FRAME.pack(kind, rid, len(payload)) + payload
