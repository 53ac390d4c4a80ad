"""``labeller serve``: the Streamlit app and one local worker, started and stopped together."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labeller.project import Project

APP_ENTRY = Path(__file__).parent / "app" / "main.py"
STOP_GRACE_SECONDS = 15.0
WORKER_RESTARTS = 5  # a worker that keeps dying is left dead after this many restarts
STREAMLIT_CONFIG = Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml"
REQUIRED_OPTIONS = {
    "server.headless": True,
    "server.fileWatcherType": "none",  # the watcher crashes walking torch.classes (streamlit#10992)
    "browser.gatherUsageStats": False,
}


class ServeError(RuntimeError):
    """The app cannot be started as asked (e.g. its port is taken); the message says what to do."""


def port_in_use(port: int) -> bool:
    """True when something listens on ``port`` (Streamlit would fail to bind it after starting)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR ignores connections closing (TIME_WAIT), never a listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def streamlit_flags(config_file: Path = STREAMLIT_CONFIG) -> list[str]:
    """The repository's ``.streamlit/config.toml`` as command-line flags.

    ``streamlit run`` reads that file only from its working directory; flags make the theme, upload limit
    and XSRF protection hold wherever ``labeller serve`` is started from.
    """
    options: dict[str, object] = {}
    if config_file.is_file():
        for section, values in tomllib.loads(config_file.read_text()).items():
            options.update({f"{section}.{key}": value for key, value in values.items()})
    options.update(REQUIRED_OPTIONS)
    flags: list[str] = []
    for name, value in options.items():
        flags += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def streamlit_command(project: Project, port: int) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_ENTRY),
        *streamlit_flags(),
        "--server.port", str(port),
        "--", "--project", str(project.root),
    ]  # fmt: skip


def worker_command(project: Project, extra: list[str] | None = None) -> list[str]:
    # ``python -m labeller worker``: the CLI's command, so labeller.worker never imports the CLI back.
    return [sys.executable, "-m", "labeller", "worker", str(project.root), *(extra or [])]


@dataclass
class Served:
    app: subprocess.Popen
    worker: subprocess.Popen | None
    port: int

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"


def start(project: Project, *, port: int | None = None, with_worker: bool = True) -> Served:
    """Start the app (and a worker) as child processes; the caller stops them with ``stop``."""
    if not APP_ENTRY.is_file():
        raise FileNotFoundError(f"the app entry point {APP_ENTRY} is missing")
    if port is not None and port_in_use(port):
        raise ServeError(f"port {port} is in use: pick another with --port, or leave --port out for a free one")
    port = port or free_port()
    app = _spawn(streamlit_command(project, port), project)
    worker = _spawn(worker_command(project), project) if with_worker else None
    return Served(app=app, worker=worker, port=port)


HEALTH_TIMEOUT_S = 180.0


def wait_until_healthy(served: Served, *, timeout: float) -> bool:
    """Wait for the app's health check; False when the app exited first. After ``timeout`` it gives up
    waiting and returns True (a slow machine still gets its URL)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served.app.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return served.app.poll() is None


def _spawn(command: list[str], project: Project) -> subprocess.Popen:
    # A session of their own: a Ctrl-C in the terminal reaches only ``serve``, which then stops each
    # child once with SIGTERM (a worker that got SIGINT too would take SIGTERM as a second, hard stop).
    # Being in their own session, they would outlive a ``serve`` killed with SIGKILL (the port stays
    # taken); on Linux the kernel sends them SIGTERM when it dies.
    env = {**os.environ, "LABELLER_PROJECT": str(project.root)}
    return subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel for SIGTERM when ``parent`` dies (Linux's PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the forked child should only make calls

    def request() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # it died between fork and prctl: no signal will come
            os._exit(1)

    return request


def _terminate(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop(served: Served) -> None:
    # The worker first: it hands a running job back to the queue before the app goes away.
    _terminate(served.worker)
    _terminate(served.app)


def _stop_requested(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def serve(project: Project, *, port: int | None = None, with_worker: bool = True) -> int:
    """Run until Ctrl-C or SIGTERM (or the app exits); restart a worker that dies. Returns the app's exit code.

    Both signals are handled explicitly: a process started in the background inherits an ignored SIGINT,
    and a plain SIGTERM (``docker stop``, systemd) would otherwise leave the app and worker, which run in
    sessions of their own, behind."""
    # SIGHUP too: a closed terminal or SSH session stops the children instead of orphaning them.
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _stop_requested) for sig in stop_signals}
    try:
        return _run(project, port=port, with_worker=with_worker)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(project: Project, *, port: int | None, with_worker: bool) -> int:
    served = start(project, port=port, with_worker=with_worker)
    restarts = 0
    try:
        # The URL only once the app answers: a URL printed before a failed start sends people nowhere.
        if not wait_until_healthy(served, timeout=HEALTH_TIMEOUT_S):
            print(f"the app did not start (exit code {served.app.returncode}); see its messages above", file=sys.stderr)
            return served.app.returncode or 1
        print(f"Latent Labeller: {served.url}  (Ctrl-C stops the app{' and its worker' if with_worker else ''})")
        while served.app.poll() is None:
            if served.worker is not None and served.worker.poll() is not None:
                code = served.worker.returncode
                if restarts >= WORKER_RESTARTS:
                    print(f"the worker exited with code {code} {restarts} times; not restarting it", file=sys.stderr)
                    served.worker = None
                else:
                    restarts += 1
                    print(f"the worker exited with code {code}; restarting it", file=sys.stderr)
                    served.worker = _spawn(worker_command(project), project)
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        stop(served)
    return served.app.returncode or 0
