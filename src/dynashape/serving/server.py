"""Start a local ``tritonserver`` on a model repository (tests, benchmarks, trying a repository).

The binary is the one the ``nvidia-pytriton`` wheel ships (``pytriton/tritonserver``: the server,
its Python backend and one backend stub per Python version; its libraries in
``nvidia_pytriton.libs``). The Python backend runs ``model.py`` in an embedded interpreter; the
stub for the serving Python's version is copied into a private backend directory, and that
Python's home, ``sys.path`` and ``libpython`` directory are handed to it through the
environment, so the models import what that Python imports (a venv, an editable install). Only
pytriton's files are used, not its Python API (which pins numpy < 2).

``with TritonServer(repo) as server: server.http_url`` starts it on free ports, waits until every
model is ready (or the server exits: its log tail is in the error) and always stops it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from dynashape.errors import DynashapeError

log = logging.getLogger(__name__)

# a tritonserver tree to use instead of the installed pytriton's (its libraries, if any, in
# ../../nvidia_pytriton.libs as in the wheel)
TRITON_DIR_ENV = "DYNASHAPE_TRITONSERVER_DIR"
_INSTALL_HINT = "pip install --no-deps nvidia-pytriton==0.7.0 (it ships the tritonserver binary)"


@dataclass(frozen=True)
class TritonInstall:
    """A ``tritonserver`` tree: ``bin/tritonserver``, ``backends/python``, the Python stubs."""

    root: Path
    libs: Path | None

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    def stub(self, version: str) -> Path:
        for candidate in (self.root / "python_backend_stubs" / version / "triton_python_backend_stub",
                          self.python_backend / "triton_python_backend_stub"):
            if candidate.is_file():
                return candidate
        have = sorted(p.name for p in (self.root / "python_backend_stubs").glob("*")) or ["none"]
        raise DynashapeError(
            f"tritonserver in {self.root} has no Python-backend stub for Python {version} (it has: "
            f"{', '.join(have)}); serve with one of those Pythons (--python)"
        )

    @classmethod
    def find(cls) -> TritonInstall:
        given = os.environ.get(TRITON_DIR_ENV)
        if given:
            root = Path(given)
            if not (root / "bin" / "tritonserver").is_file():
                raise DynashapeError(f"{TRITON_DIR_ENV}={given}: no bin/tritonserver in it")
            libs = root.parent.parent / "nvidia_pytriton.libs"  # pytriton's layout, unpacked elsewhere
            return cls(root, libs if libs.is_dir() else None)
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise DynashapeError(f"no tritonserver found: {_INSTALL_HINT}, or set {TRITON_DIR_ENV}")
        package = Path(next(iter(spec.submodule_search_locations)))
        root = package / "tritonserver"
        if not (root / "bin" / "tritonserver").is_file():
            raise DynashapeError(f"{package}: this pytriton has no tritonserver binary; {_INSTALL_HINT}")
        libs = package.parent / "nvidia_pytriton.libs"
        return cls(root, libs if libs.is_dir() else None)


_PROBE = (
    "import json, os, sys, sysconfig; print(json.dumps({'version': '%d.%d' % sys.version_info[:2], "
    "'base_prefix': sys.base_prefix, 'libdir': sysconfig.get_config_var('LIBDIR') or '', "
    "'ldlibrary': sysconfig.get_config_var('LDLIBRARY') or '', 'path': [p for p in sys.path if p], "
    "'ld_library_path': os.environ.get('LD_LIBRARY_PATH', '')}))"
)


@dataclass(frozen=True)
class PythonEnv:
    """What the Python backend needs from the Python whose packages the models use."""

    executable: str
    version: str
    base_prefix: str
    libdir: str
    ldlibrary: str
    path: tuple[str, ...]
    ld_library_path: str

    @classmethod
    def probe(cls, executable: str) -> PythonEnv:
        try:
            done = subprocess.run([executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True)
            data = json.loads(done.stdout.strip().splitlines()[-1])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
            raise DynashapeError(f"--python {executable}: cannot ask it for its paths ({exc})") from None
        return cls(executable, data["version"], data["base_prefix"], data["libdir"], data["ldlibrary"],
                   tuple(data["path"]), data["ld_library_path"])


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the Python that started it dies, so a
    killed test run leaves no server behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TritonServer:
    """A ``tritonserver`` process on ``repository``; a context manager."""

    def __init__(
        self,
        repository: str | os.PathLike[str],
        *,
        python: str | None = None,
        ready_timeout: float = 60.0,
        log_path: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        install: TritonInstall | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.python = python or sys.executable
        self.ready_timeout = ready_timeout
        self.extra_env = dict(env or {})
        self.install = install
        self.http_port = self.grpc_port = 0
        self._log_path = Path(log_path) if log_path else None
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._final_log: str | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def log_text(self) -> str:
        """The server's output so far (after ``stop``, all of it)."""
        if self._workdir is None and self._final_log is not None:
            return self._final_log
        try:
            return self._log_path.read_text(errors="replace") if self._log_path else ""
        except OSError:
            return ""

    def _command_and_env(self, workdir: Path) -> tuple[list[str], dict[str, str]]:
        install = self.install or TritonInstall.find()
        py = PythonEnv.probe(self.python)
        backends = workdir / "backends"
        shutil.copytree(install.python_backend, backends / "python", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(install.stub(py.version), backends / "python" / "triton_python_backend_stub")
        lib_dirs = [py.libdir] if py.libdir else []
        if py.ldlibrary.endswith(".a") or not any((Path(d) / py.ldlibrary).exists() for d in lib_dirs):
            log.warning("%s has no shared libpython next to it (%s): the Python backend stub will look for "
                        "libpython%s.so elsewhere", self.python, py.ldlibrary or "unknown", py.version)
        if install.libs is not None:
            lib_dirs.append(str(install.libs))
        for extra in (py.ld_library_path, os.environ.get("LD_LIBRARY_PATH", "")):
            lib_dirs += [d for d in extra.split(os.pathsep) if d]
        env = dict(os.environ)
        env.update({
            "LD_LIBRARY_PATH": os.pathsep.join(dict.fromkeys(lib_dirs)),
            "PYTHONHOME": py.base_prefix,
            "PYTHONPATH": os.pathsep.join(py.path),
            "PATH": os.pathsep.join([str(Path(self.python).parent), env.get("PATH", "")]),
            "PYTHONNOUSERSITE": "1",
        })
        env.update(self.extra_env)
        self.http_port, self.grpc_port = free_port(), free_port()
        command = [
            str(install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--disable-auto-complete-config",  # serve the config as written, or fail
            "--exit-timeout-secs=5",
            # one shared-memory namespace per server: several may run on one machine
            f"--backend-config=python,shm-region-prefix-name=dynashape-{uuid.uuid4().hex[:12]}",
            "--backend-config=python,shm-growth-byte-size=16777216",
        ]
        return command, env

    def start(self) -> TritonServer:
        if not self.repository.is_dir():
            raise DynashapeError(f"{self.repository}: no such model repository")
        self._workdir = Path(tempfile.mkdtemp(prefix="dynashape-triton-"))
        try:
            command, env = self._command_and_env(self._workdir)
            if self._log_path is None:
                self._log_path = self._workdir / "tritonserver.log"
            log.info("starting %s", " ".join(command))
            with open(self._log_path, "wb") as out:
                self._process = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                    cwd=self._workdir, preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        url = f"http://{self.http_url}/v2/health/ready"
        start = time.monotonic()
        while time.monotonic() - start < self.ready_timeout:
            code = self._process.poll()
            if code is not None:
                raise DynashapeError(
                    f"tritonserver exited with code {code} before its models were ready: {self._last_error()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        log.info("tritonserver ready in %.1f s on %s", time.monotonic() - start, self.http_url)
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise DynashapeError(f"tritonserver was not ready after {self.ready_timeout:.0f} s: {self._last_error()}")

    def _last_error(self) -> str:
        """The line saying why: a model's load failure (its first line), else the last error."""
        lines = [ln.strip() for ln in self.log_text().splitlines() if ln.strip()]
        for ln in lines:
            if "failed to load '" in ln:
                text = ln.split('] "', 1)[-1]
                return text.split("\\n", 1)[0].rstrip('"')[:500]
        errors = [ln for ln in lines if ln.startswith("E") or "error" in ln.lower()]
        return (errors or lines or ["(no log)"])[-1][:500]

    def stop(self) -> None:
        proc, self._process = self._process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the server's own group: it and its backend stubs
                proc.wait(timeout=10)
        if self._workdir is not None:
            self._final_log = self.log_text()  # the log may live in the workdir, removed now
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
