"""A MONAI Label server for the tests: started from the app's own environment on a free local port, stopped with its
whole process group; and the few HTTP calls the tests make (standard library only: the bundle's environment has no
HTTP client)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "apps" / "monailabel"
APP_VENV = REPO / ".venv-monailabel"
APP_PYTHON = APP_VENV / "bin" / "python"


def require_app_env() -> None:
    """Skip (fail under CI) when the app's environment is missing."""
    import pytest

    if APP_PYTHON.is_file():
        return
    message = f"{APP_VENV} does not exist: create it with `bash scripts/setup_monailabel.sh`"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (.ci/run does; under CI a missing environment is a failure)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m monailabel.main start_server`` of ``APP_VENV`` in its own process group, output in ``log``."""

    def __init__(self, studies: Path, conf: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [str(APP_PYTHON), "-m", "monailabel.main", "start_server", "--app", str(APP_DIR),
               "--studies", str(studies), "-i", "127.0.0.1", "-p", str(self.port)]
        for key, value in conf.items():
            cmd += ["--conf", key, str(value)]
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)  # the bundle's test run must not leak into the app's interpreter
        with open(log, "wb") as out:
            self.process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float) -> float:
        """Seconds until ``/info/`` answers; raises with the log's tail when the server dies or is too slow."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/info/", timeout=5)
                return time.monotonic() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise TimeoutError(f"the server did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the whole process group (server and any training child), SIGKILL after ``timeout``."""
        pgid = self.process.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and group_alive(pgid):
            self.process.poll()
            time.sleep(0.2)
        if group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
        self.process.wait(timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 600) -> tuple[bytes, str]:
        """``(body, content type)`` of a request; raises ``HTTPError`` (with the server's detail) on 4xx/5xx."""
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.read(), response.headers.get("Content-Type", "")

    def answer(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
               timeout: float = 600) -> tuple[int, bytes]:
        """``(HTTP status, body)`` of a request, errors included (the query is sent as written: no re-encoding)."""
        try:
            return 200, self.request(method, path, body, headers, timeout)[0]
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get(self, path: str, timeout: float = 60):
        return json.loads(self.request("GET", path, timeout=timeout)[0])

    def post_json(self, path: str, payload: dict | None = None, timeout: float = 600):
        body = json.dumps(payload or {}).encode()
        return json.loads(self.request("POST", path, body, {"Content-Type": "application/json"}, timeout)[0])


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, from ``/proc``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, ...
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def multipart_body(fields: dict[str, tuple[str | None, bytes, str]]) -> tuple[bytes, str]:
    """``(body, content type)`` of a ``multipart/form-data`` request; each field is ``(file name or None, bytes,
    content type)``."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, (filename, data, ctype) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n\r\n".encode()
                     + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def multipart_fields(body: bytes, content_type: str) -> dict[str, bytes]:
    """The parts of a ``multipart/form-data`` response (MONAI Label's infer answer: ``params`` and ``image``)."""
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    fields = {}
    for part in body.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        fields[name] = data[:-2] if data.endswith(b"\r\n") else data
    return fields
