"""A seccomp filter of our own, loaded by every process that runs code."""

from omcp_py.runner.pid1.procs import _prctl

try:
    import ctypes
except ImportError:  # then _prctl is None too, and no filter is built
    ctypes = None

# Docker's default seccomp profile already refuses these under runc; gVisor does not
# apply it (runsc needs --oci-seccomp), and inside gVisor an unprivileged process may
# create a user namespace and hold every capability there. So each code process gets
# this filter too: namespaces, mounts, kernel modules, kexec, bpf, keyrings and
# handle-based opens fail with EPERM; clone3 with ENOSYS (its flags cannot be read by
# a filter; the C library falls back to clone, whose flags can).
_ARCHES = {
    # AUDIT_ARCH: (clone, clone3, {refused syscalls})
    0xC000003E: (  # x86_64
        56,
        435,
        {272, 308, 165, 166, 155, 175, 313, 176, 246, 320, 321, 250, 248, 249, 304}
        | set(range(428, 434)),
    ),
    0xC00000B7: (  # aarch64
        220,
        435,
        {97, 268, 40, 39, 41, 105, 273, 106, 104, 294, 280, 219, 217, 218, 265}
        | set(range(428, 434)),
    ),
}
_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET


def seccomp_program():
    """The BPF program, as (code, jt, jf, k) tuples."""
    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    blocks = []
    for arch, (clone, clone3, refused) in _ARCHES.items():
        block = [(ld_abs, 0, 0, 0)]  # seccomp_data.nr
        if arch == 0xC000003E:  # the x32 calls of x86_64, all of them
            block += [(jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]
        for nr in sorted(refused):
            block += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
        block += [(jeq, 0, 1, clone3), (ret, 0, 0, enosys)]
        block += [
            (jeq, 0, 3, clone),
            (ld_abs, 0, 0, 16),  # args[0], its low 32 bits: the clone flags
            (jset, 0, 1, _NAMESPACE_FLAGS),
            (ret, 0, 0, eperm),
            (ret, 0, 0, allow),
        ]
        blocks.append((arch, block))
    # Dispatch on seccomp_data.arch; another architecture keeps the runtime's rules.
    program = [(ld_abs, 0, 0, 4)]
    before = 0
    for index, (arch, block) in enumerate(blocks):
        # A jump of k lands k + 1 instructions further: past the other dispatches,
        # the final allow, and the blocks before this one.
        program.append((jeq, len(blocks) - index + before, 0, arch))
        before += len(block)
    program.append((ret, 0, 0, allow))
    for _, block in blocks:
        program.extend(block)
    return program


# Built once in PID 1 (prepare_seccomp), loaded by each child: held in a dict, never
# rebound, so the parts behave the same imported and assembled.
SECCOMP = {"program": None}


def prepare_seccomp():
    if _prctl is None:
        return

    class SockFilter(ctypes.Structure):
        _fields_ = [
            ("code", ctypes.c_ushort),
            ("jt", ctypes.c_ubyte),
            ("jf", ctypes.c_ubyte),
            ("k", ctypes.c_uint),
        ]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    program = seccomp_program()
    filters = (SockFilter * len(program))(*[SockFilter(*op) for op in program])
    fprog = SockFprog(len(program), filters)
    # The pointer keeps the program alive; each child passes it to prctl as is.
    SECCOMP["program"] = ctypes.byref(fprog)


def install_seccomp():
    """Load the filter into this process (and all it starts). False when impossible."""
    program = SECCOMP["program"]
    if program is None:
        return False
    PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
    return _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, program, 0, 0) == 0
