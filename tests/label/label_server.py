"""Test helpers: the MONAI Label environment, a server process on 127.0.0.1, and HTTP calls to it.

japc's main test environment (numpy 2) cannot import monailabel 0.8.5, so the server runs from a
separate environment, ``.venv-label`` at the repository root (``JAPC_LABEL_ENV`` overrides the
path). :func:`ensure_label_env` creates it with pip on first use, as docs/monailabel.md
describes, and reuses it while its requirement files are unchanged. The test process itself only
talks HTTP to the server.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_DIR = REPO_ROOT / "apps" / "monailabel"
REQUIREMENTS = APP_DIR / "requirements.txt"
CONSTRAINTS = APP_DIR / "constraints.txt"
NETWORK_GUARD = Path(__file__).resolve().parent / "network_guard"

PIP_TIMEOUT_S = 900
SERVER_START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 300


class LabelEnvUnavailable(RuntimeError):
    """The label environment could not be created (no package registry, failed install)."""


def label_env_path() -> Path:
    """Folder of the label environment: ``$JAPC_LABEL_ENV`` or ``<repo>/.venv-label``."""
    configured = os.environ.get("JAPC_LABEL_ENV")
    return Path(configured) if configured else REPO_ROOT / ".venv-label"


def _has_label_extra() -> bool:
    if tomllib is None:
        return False
    with open(REPO_ROOT / "pyproject.toml", "rb") as stream:
        project = tomllib.load(stream).get("project", {})
    return "label" in project.get("optional-dependencies", {})


def _install_commands(python: Path) -> list[list[str]]:
    """The pip commands of docs/monailabel.md: japc with the label extra, then monailabel without dependencies."""
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    if _has_label_extra():
        japc = [*pip, "-e", f"{REPO_ROOT}[label]", "-c", str(CONSTRAINTS)]
    else:
        japc = [*pip, "-e", str(REPO_ROOT), "-r", str(REQUIREMENTS), "-c", str(CONSTRAINTS)]
    return [japc, [*pip, "--no-deps", "-c", str(CONSTRAINTS), "monailabel"]]


def _stamp() -> str:
    digest = hashlib.sha256(str(REPO_ROOT).encode())
    for path in (REQUIREMENTS, CONSTRAINTS, REPO_ROOT / "pyproject.toml"):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _imports_work(python: Path) -> bool:
    if not python.exists():
        return False
    check = subprocess.run(
        [str(python), "-c", "import monailabel.main, japc.label"], capture_output=True, timeout=300, check=False
    )
    return check.returncode == 0


def ensure_label_env() -> Path:
    """Return the label environment's Python, creating or updating the environment when needed.

    Raises:
        LabelEnvUnavailable: venv creation or a pip command failed or timed out.
    """
    env = label_env_path()
    python = env / "bin" / "python"
    stamp_file = env / "japc-label.stamp"
    lock_path = Path(tempfile.gettempdir()) / f"japc-label-env-{hashlib.sha256(str(env).encode()).hexdigest()[:12]}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = _stamp()
        if stamp_file.exists() and stamp_file.read_text() == stamp and _imports_work(python):
            return python
        commands = [] if python.exists() else [[sys.executable, "-m", "venv", str(env)]]
        commands += _install_commands(python)
        for command in commands:
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired as error:
                raise LabelEnvUnavailable(f"`{' '.join(command)}` timed out after {PIP_TIMEOUT_S} s") from error
            if result.returncode != 0:
                raise LabelEnvUnavailable(
                    f"`{' '.join(command)}` failed with exit code {result.returncode}:\n{(result.stdout + result.stderr)[-2000:]}"
                )
        if not _imports_work(python):
            raise LabelEnvUnavailable(f"{python} cannot import monailabel and japc after installation")
        stamp_file.write_text(stamp)
    return python


def copy_app(destination: Path) -> Path:
    """Copy the app folder, because ``start_server`` creates ``logs``, ``model`` and ``bin`` inside it."""
    return Path(shutil.copytree(APP_DIR, destination, ignore=shutil.ignore_patterns("__pycache__", "logs", "model", "bin")))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Response:
    """An HTTP response: status, content type and body."""

    status: int
    content_type: str
    body: bytes

    def json(self) -> dict:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def parts(self) -> dict[str, tuple[str | None, bytes]]:
        """Parts of a ``multipart/form-data`` body: form name -> (file name, content)."""
        message = email.message_from_bytes(
            f"Content-Type: {self.content_type}\r\n\r\n".encode() + self.body, policy=email.policy.HTTP
        )
        return {
            part.get_param("name", header="content-disposition"): (part.get_filename(), part.get_payload(decode=True))
            for part in message.iter_parts()
        }


@dataclass
class LabelServer:
    """A running MONAI Label server: its base URL, process, log file and network guard log."""

    url: str
    process: subprocess.Popen
    log_path: Path
    guard_log: Path

    def log_tail(self, characters: int = 3000) -> str:
        """The end of the server's log, for failure messages."""
        return self.log_path.read_text(errors="replace")[-characters:] if self.log_path.exists() else ""

    def blocked_connections(self) -> list[str]:
        """Connections and look-ups outside the loopback range that the network guard refused."""
        return self.guard_log.read_text().splitlines() if self.guard_log.exists() else []

    def get(self, path: str) -> Response:
        """GET ``path`` (relative to the server URL)."""
        return _send(urllib.request.Request(self.url + path, method="GET"))

    def post(self, path: str, fields: Mapping[str, str] | None = None, files: Mapping[str, tuple[str, bytes]] | None = None) -> Response:
        """POST a ``multipart/form-data`` body with text ``fields`` and ``files`` (form name -> (file name, content))."""
        body, content_type = encode_multipart(fields or {}, files or {})
        request = urllib.request.Request(self.url + path, data=body, method="POST", headers={"Content-Type": content_type})
        return _send(request)


def encode_multipart(fields: Mapping[str, str], files: Mapping[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """Encode form fields and files as ``multipart/form-data``; returns the body and its content type."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, value in fields.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content) in files.items():
        header = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        chunks.append(header.encode() + content + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


# Only the servers started here are contacted, so proxies from the environment are bypassed.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _send(request: urllib.request.Request) -> Response:
    try:
        with _OPENER.open(request, timeout=REQUEST_TIMEOUT_S) as answer:
            return Response(answer.status, answer.headers.get("Content-Type", ""), answer.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, error.headers.get("Content-Type", ""), error.read())


@contextlib.contextmanager
def run_server(python: Path, app_dir: Path, studies: Path, conf: Mapping[str, str], work_dir: Path) -> Iterator[LabelServer]:
    """Start ``monailabel start_server`` on 127.0.0.1 with the network guard, and stop it afterwards.

    Raises:
        RuntimeError: the server exited, or ``GET /info/`` did not succeed within
            ``SERVER_START_TIMEOUT_S``. The message contains the end of its log.
    """
    port = free_port()
    log_path = work_dir / f"server-{port}.log"
    guard_log = work_dir / f"network-guard-{port}.log"
    command = [
        str(python), "-m", "monailabel.main", "start_server",
        "--app", str(app_dir), "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port),
    ]
    for key, value in conf.items():
        command += ["--conf", key, str(value)]
    environment = dict(
        os.environ,
        PYTHONPATH=str(NETWORK_GUARD),
        JAPC_NETWORK_GUARD_LOG=str(guard_log),
        MONAI_LABEL_SESSIONS="false",
        MONAI_LABEL_DATASTORE_AUTO_RELOAD="false",
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=work_dir)
    server = LabelServer(f"http://127.0.0.1:{port}", process, log_path, guard_log)
    try:
        _wait_until_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def _wait_until_ready(server: LabelServer) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"MONAI Label server exited with code {server.process.returncode}:\n{server.log_tail()}")
        try:
            if server.get("/info/").status == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1.0)
    raise RuntimeError(f"MONAI Label server did not answer within {SERVER_START_TIMEOUT_S} s:\n{server.log_tail()}")
