"""Hostile inputs, generated at test time (no tests here): bombs, hangs and malformed files."""

from __future__ import annotations

import io
import struct
import zlib

TINY = "input: {channels: 3, height: 32, width: 32}\nstem: cifar\n"


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one byte of pixel data: a few hundred
    bytes that a decoder would expand to width * height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


# An EXIF block (little-endian TIFF) whose orientation is 6 and whose other entries make
# Pillow's EXIF writer raise struct.error inside ImageOps.exif_transpose (found by fuzzing).
BAD_EXIF = bytes.fromhex(
    "49492a0008000000050012010300010000000600000012010c00020000000800000001020100020000000000"
    "0000ab130500ffff00000800000005a00600ffffff7f64000000000000008ea70ccbf2451529b1b80223613"
    "8f116a10ca1c9408cd0484bce9c1e534044f61716c65c")


def jpeg_with_exif(exif: bytes = BAD_EXIF, size: int = 48) -> bytes:
    """A small valid JPEG with `exif` inserted as an APP1 segment."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (120, 30, 200)).save(buffer, "JPEG")
    data = buffer.getvalue()
    segment = b"Exif\x00\x00" + exif
    app1 = b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment
    return data[:2] + app1 + data[2:]


def billion_laughs(levels: int = 12, fanout: int = 10) -> str:
    """Each anchor lists the previous one `fanout` times: fanout**levels nodes when expanded."""
    lines = ["a0: &a0 [x]"]
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * fanout)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "name: laughs\nstages: [1]\n" + "\n".join(lines) + "\n"


def merge_key_bomb(levels: int = 30) -> str:
    """Merge keys doubling at every level: 2**levels merged entries if expanded eagerly."""
    lines = ["m0: &m0 {k: 1}"]
    for level in range(1, levels):
        lines.append(f"m{level}: &m{level} {{<<: [*m{level - 1}, *m{level - 1}]}}")
    return "name: merges\nstages: [1]\n" + "\n".join(lines) + "\n"


def bounded(run):  # noqa: ANN001, ANN201 - any callable, its result
    """(result, seconds, peak bytes): timed on its own, then run again under tracemalloc
    (which slows Python down several times) for the peak of Python and numpy allocations."""
    import time
    import tracemalloc

    started = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    try:
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, elapsed, peak


def fifo(path, unblock_after: float = 10.0):  # noqa: ANN001, ANN201 - a Path, the same Path
    """A FIFO at `path` that nobody writes to: a reader blocks forever. After `unblock_after`
    seconds a writer opens and closes it, so a regression fails its test instead of hanging."""
    import os
    import threading

    os.mkfifo(path)

    def unblock() -> None:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # nobody was reading: nothing to unblock
            pass

    timer = threading.Timer(unblock_after, unblock)
    timer.daemon = True
    timer.start()
    return path


def sparse(path, size: int, head: bytes = b""):  # noqa: ANN001, ANN201 - a Path, the same
    """A file of `size` bytes that takes no disk space beyond `head` (then a hole): a file
    that claims gigabytes and costs none, e.g. 1.5 GiB of zeros."""
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)
    return path


def unix_socket(path):  # noqa: ANN001, ANN201 - a Path, the same Path
    """A bound Unix socket at `path` (closed again: the socket file stays)."""
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
    return path


# -- bounds on a refusal: its time and its memory --------------------------------------------

MiB = 1024 * 1024
GiB = 1024 * MiB


def _rss_peak_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def refused_within(call, error: type[BaseException], seconds: float, peak_bytes: int
                   ) -> BaseException:
    """Run `call()` in this process, expecting `error`; assert it took under `seconds`, that
    Python and numpy allocated under `peak_bytes` (tracemalloc) and that the process's peak
    resident memory grew by less than `peak_bytes` (native allocations: onnx, protobuf).
    Returns the exception for the caller to check its message."""
    import time
    import tracemalloc

    rss_before = _rss_peak_bytes()
    started = time.perf_counter()
    tracemalloc.start()
    try:
        try:
            call()
        except error as exc:
            caught = exc
        else:
            raise AssertionError(f"{call} was not refused with {error.__name__}")
        _, traced = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    took = time.perf_counter() - started
    grown = _rss_peak_bytes() - rss_before
    assert took < seconds, f"refused after {took:.1f} s (bound {seconds} s)"
    assert traced < peak_bytes, f"allocated {traced:,} bytes (bound {peak_bytes:,})"
    assert grown < peak_bytes, f"peak RSS grew by {grown:,} bytes (bound {peak_bytes:,})"
    return caught


class CliRun:
    """A finished `resnext-compile` child: exit code, output, wall time, peak RSS."""

    def __init__(self, code: int, out: str, err: str, seconds: float, peak_bytes: int):
        self.code, self.out, self.err = code, out, err
        self.seconds, self.peak_bytes = seconds, peak_bytes

    def __repr__(self) -> str:
        return (f"CliRun(code={self.code}, seconds={self.seconds:.1f}, peak={self.peak_bytes:,}, "
                f"err={self.err[-800:]!r})")


# The CLI with its own peak RSS written at exit: wait4's ru_maxrss also counts the test
# process's pages that the child held between fork and exec, so a test worker grown past the
# bound by earlier tests would fail a child that stayed well under it. VmHWM is this image's
# high-water mark; RUSAGE_CHILDREN covers the processes the CLI started and waited for.
_REPORT_PEAK = """
import atexit, os, re, resource, runpy, sys
def report():
    status = open("/proc/self/status").read()
    own = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(os.environ["RESNEXT_TEST_PEAK_FILE"], "w") as peak:
        peak.write(str(1024 * max(own, children)))
atexit.register(report)
sys.argv[0] = "resnext-compile"
runpy.run_module("resnext_compiler.cli", run_name="__main__", alter_sys=True)
"""


def run_cli_bounded(*args: object, address_space: int = 6 * GiB, timeout: float = 120,
                    env: dict[str, str] | None = None) -> CliRun:
    """`resnext-compile ARGS` in a child whose address space is capped (a regression cannot
    take the machine down), with its own peak RSS (reported by the child at exit; wait4's,
    which overstates it, when the child was killed)."""
    import os
    import resource
    import subprocess
    import sys
    import tempfile
    import time

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryDirectory() as folder:
        peak_file = os.path.join(folder, "peak")
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", _REPORT_PEAK, *map(str, args)],
                                 stdout=out, stderr=err, preexec_fn=cap,
                                 env={**os.environ, **(env or {}),
                                      "RESNEXT_TEST_PEAK_FILE": peak_file})
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                child.kill()
                pid, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.02)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        try:
            with open(peak_file) as reported:
                peak = int(reported.read())
        except (OSError, ValueError):
            peak = usage.ru_maxrss * 1024
        return CliRun(child.returncode, out.read().decode(errors="replace"),
                      err.read().decode(errors="replace"), seconds, peak)

