"""Run the bundle's real commands many times without paying Python's start-up (torch, MONAI imports) each time.

``python forkserver.py`` imports what the commands import, then reads one JSON request per line on stdin and runs
each command in a fork of itself, exactly as the interpreter would run it: ``python -m MODULE ARGS`` through
``runpy`` as ``__main__``, a console script through its ``pyproject.toml`` entry point, an uncaught exception through
``sys.excepthook`` (the bundle's, which prints the last ``ERROR:`` line) with exit status 1. The child's stdout and
stderr go to files; its exit status comes back as one JSON line. The server itself never runs a torch operation, so
forking it is safe.

A request may also ask for OS-level limits that only a real process can have: ``fsize`` (``RLIMIT_FSIZE``: writes
past that size fail with ``EFBIG``, SIGXFSZ ignored; the command's stdout and stderr are pipes, as on a terminal, so
its log is not cut by the limit) and ``drop_file_capabilities`` (root loses ``CAP_DAC_OVERRIDE``,
``CAP_DAC_READ_SEARCH`` and ``CAP_FOWNER``, so that file modes apply to it as to any user, while it still reads
everything root owns). With ``"announce": true`` the server first answers ``{"pid": ...}``, so that the caller can
``kill -9`` the command (its own process group, leader ``pid``) while it runs; the exit status follows when it ends.
"""

from __future__ import annotations

import json
import os
import resource
import runpy
import signal
import sys
import threading
import traceback

CONSOLE_SCRIPTS = {
    "sam-priors-datalist": "bundle.data.datalist_cli:main",
    "sam-priors-infer": "bundle.inference.cli:main",
    "sam-priors-cache": "bundle.priors.cache_cli:main",
}
PRELOAD = ("torch", "monai", "monai.bundle", "monai.bundle.__main__", "ignite.engine", "nibabel", "fire", "bundle",
           "bundle.priors.precompute", "bundle.inference.batch", "bundle.workflows.segmentation",
           "bundle.data.datalist")


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _run(request: dict) -> int:
    argv = request["argv"]
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    module, name = CONSOLE_SCRIPTS[argv[0]].split(":")
    sys.argv = list(argv)
    __import__(module)
    return _exit_code(getattr(sys.modules[module], name)())


_CAPABILITY_VERSION_3 = 0x20080522
_FILE_CAPABILITIES = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def _drop_file_capabilities() -> None:
    """Remove the capabilities that let root ignore file modes from this process (``capget`` / ``capset``)."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(_CAPABILITY_VERSION_3, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for bit in _FILE_CAPABILITIES:
        data[0].effective &= ~(1 << bit) & 0xFFFFFFFF
        data[0].permitted &= ~(1 << bit) & 0xFFFFFFFF
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _child(request: dict, pipes: dict) -> None:
    os.setsid()  # a process group of its own: a kill reaches any worker it starts
    os.chdir(request["cwd"])
    os.environ.update(request.get("env", {}))
    for fd, name in ((1, "stdout"), (2, "stderr")):
        read, write = pipes[name]
        os.close(read)
        os.dup2(write, fd)
        os.close(write)
    signal.alarm(int(request.get("timeout", 300)))
    if request.get("fsize"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize"], request["fsize"]))
    if request.get("drop_file_capabilities"):
        _drop_file_capabilities()
    try:
        code = _run(request)
    except SystemExit as exit_:
        code = _exit_code(exit_.code)
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        sys.excepthook(*sys.exc_info())
        code = 1
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def main() -> None:
    for name in PRELOAD:
        __import__(name)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pipes = {name: os.pipe() for name in ("stdout", "stderr")}
        pid = os.fork()
        if pid == 0:
            try:
                _child(request, pipes)
            except BaseException:  # noqa: BLE001 - a broken request must not return into the server loop
                traceback.print_exc()
                os._exit(99)
        copiers = []
        for name, (read, write) in pipes.items():
            os.close(write)
            copiers.append(threading.Thread(target=_copy, args=(read, request[name]), daemon=True))
            copiers[-1].start()
        if request.get("announce"):
            print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        for copier in copiers:
            copier.join(timeout=30)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


def _copy(read_fd: int, path: str) -> None:
    """Copy what the command writes into a pipe to its log file, as it comes (a drill may watch the file)."""
    with open(read_fd, "rb", buffering=0) as source, open(path, "wb", buffering=0) as target:
        while chunk := source.read(65536):
            target.write(chunk)


if __name__ == "__main__":
    main()
