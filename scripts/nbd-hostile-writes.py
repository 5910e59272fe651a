#!/usr/bin/env python3
"""Rejected WRITEs over libnbd: each must get its NBD error from the server and leave the
connection usable (a read on the same handle still works).

    nbd-hostile-writes.py WRITABLE_URI READONLY_URI

WRITABLE_URI is a writable export whose first 4 KiB hold 0x5a; READONLY_URI a read-only one
(a snapshot) whose first 4 KiB hold 0x5a too. Run by test/Ovis.Interop.Tests (LibnbdTests).

Strict mode is off: by default libnbd refuses writes past the end and writes to a read-only
export itself, and the server would never see them. "command failed" in libnbd's message says
the error came back from the server (a client-side refusal reads "request out of bounds" or
"server does not support write operations"). Prints one line per check; exits 1 on the first
failure.
"""
import errno
import sys

import nbd

MiB = 1 << 20


def connect(uri):
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.connect_uri(uri)
    return h


def fail(text):
    print(f"FAIL {text}")
    sys.exit(1)


def expect_server_error(h, what, expected, buf, offset):
    try:
        h.pwrite(buf, offset)
    except nbd.Error as e:
        if e.errno != errno.errorcode[expected] and e.errno != expected:
            fail(f"{what}: {e.string} (errno {e.errno}), expected {errno.errorcode[expected]}")
        if "command failed" not in (e.string or ""):
            fail(f"{what}: refused by libnbd itself, not by the server: {e.string}")
        print(f"ok {what}: {e.string}")
    else:
        fail(f"{what}: succeeded, expected {errno.errorcode[expected]}")
    # The connection is still in sync: a read on it works and sees the old data.
    try:
        data = h.pread(4096, 0)
    except nbd.Error as e:
        fail(f"after {what}: the connection is no longer usable: {e.string}")
    if data != b"\x5a" * 4096:
        fail(f"after {what}: read back the wrong data")
    print(f"ok after {what}: a read on the same connection works")


def main():
    writable, readonly = sys.argv[1], sys.argv[2]
    h = connect(writable)
    size = h.get_size()
    maximum = h.get_block_size(nbd.SIZE_MAXIMUM)
    print(f"export size {size}, maximum payload {maximum}, libnbd {h.get_version()}")
    for n in (4 * MiB, 16 * MiB):
        # Half inside, half past the end.
        expect_server_error(h, f"{n // MiB} MiB write straddling the end", errno.ENOSPC, b"\xee" * n, size - n // 2)
    # Above the 32 MiB maximum payload the spec lets a server cap at, inside the export.
    expect_server_error(h, "32 MiB + 1 write", errno.EINVAL, bytes((32 * MiB) + 1), 0)
    h.shutdown()

    s = connect(readonly)
    if not s.is_read_only():
        fail("the read-only export is not advertised read-only")
    expect_server_error(s, "4 KiB write to a read-only export", errno.EPERM, b"\xee" * 4096, 0)
    expect_server_error(s, "4 MiB write to a read-only export", errno.EPERM, b"\xee" * (4 * MiB), 0)
    s.shutdown()
    print("all passed")


main()
