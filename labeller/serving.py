"""``labeller serve``: the Streamlit app and one local worker, started and stopped together."""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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


# Only this machine: the app has no login of its own unless one is configured (see ``login_problem``).
DEFAULT_HOST = "127.0.0.1"
SECRETS_FILE = Path(".streamlit") / "secrets.toml"
# What Streamlit's OIDC login needs in [auth] (the provider's client_id, client_secret and
# server_metadata_url may sit in [auth] or in a named provider's table such as [auth.google]).
LOGIN_KEYS = ("redirect_uri", "cookie_secret")
PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")


class ServeError(RuntimeError):
    """The app cannot be started as asked (e.g. its port is taken); the message says what to do."""


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.1, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


# The host names a browser on this machine uses; with a login, its redirect host is added (see ``allowed_hosts``).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def is_local_address(address: object) -> bool:
    """True when a server bound to Streamlit's ``server.address`` is reachable from this machine only: a
    loopback address or a Unix socket. Unset (None or "") means every interface, as ``streamlit run`` does."""
    text = str(address or "").strip()
    return bool(text) and (text.startswith("unix://") or is_loopback(text))


def host_name(header: str) -> str | None:
    """The host name of an HTTP Host header (lower case, no port, no brackets); None when it is malformed."""
    try:
        parts = urlsplit(f"//{header.strip()}")
        parts.port  # noqa: B018 (a port that is not a number in range raises ValueError)
    except ValueError:
        return None
    if not parts.hostname or parts.username is not None or parts.password is not None:
        return None
    if parts.path or parts.query or parts.fragment:
        return None
    return parts.hostname.lower().rstrip(".")


def allowed_hosts(address: object = None, redirect_uri: object = None, extra: Iterable[str] = ()) -> list[str]:
    """The host names the app answers to: this machine's (``LOCAL_HOSTS``), the address it listens on when that is
    one address (not a wildcard), the login's redirect host, and ``extra`` (Streamlit's ``server.allowedHosts``).
    A foreign name (``evil.example`` resolving to 127.0.0.1: DNS rebinding) is not among them."""
    hosts = list(LOCAL_HOSTS)
    text = str(address or "").strip().strip("[]").lower()
    if text and not text.startswith("unix://"):
        try:
            if not ipaddress.ip_address(text).is_unspecified:
                hosts.append(text)
        except ValueError:
            hosts.append(text.rstrip("."))  # a host name to listen on: the name the server is reached by
    if redirect_uri and (name := urlsplit(str(redirect_uri)).hostname):
        hosts.append(name.lower().rstrip("."))
    hosts += [str(host).strip().lower().rstrip(".") for host in extra if str(host).strip()]
    return list(dict.fromkeys(hosts))


def host_allowed(header: str | None, allowed: Iterable[str]) -> bool:
    """Whether a request's Host header names one of ``allowed`` (``*.example.org`` and ``*`` as Streamlit's
    ``server.allowedHosts`` reads them; ports are ignored). A request without a Host header is not from a
    browser (every browser sends one), so it is no DNS-rebinding page: allowed."""
    if header is None:
        return True
    name = host_name(header)
    if name is None:
        return False
    for pattern in (str(host).strip().lower().rstrip(".") for host in allowed):
        if pattern == "*" or name == pattern.strip("[]") or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


def secrets_files(project: Project, *, home: Path | None = None, cwd: Path | None = None) -> list[Path]:
    """The secrets files the app reads, last wins: Streamlit's own two (the user's and the working folder's)
    and the project's. ``labeller serve`` passes exactly these, so what it checks is what the app uses."""
    files = [(home or Path.home()) / SECRETS_FILE, (cwd or Path.cwd()) / SECRETS_FILE, project.root / SECRETS_FILE]
    return list(dict.fromkeys(path.absolute() for path in files))


def login_problem(files: Sequence[Path], *, authlib_installed: bool | None = None) -> str | None:
    """None when Streamlit's OIDC login is configured in ``files`` and can work; else what is missing."""
    auth: dict[str, object] = {}
    for path in files:
        if not path.is_file():
            continue
        try:
            auth.update(tomllib.loads(path.read_text(encoding="utf-8")).get("auth", {}))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError, TypeError, ValueError) as error:
            return f"{path} cannot be read as TOML: {error}"
    if not auth:
        return "no login is configured (no [auth] section in " + ", ".join(str(path) for path in files) + ")"
    missing = [key for key in LOGIN_KEYS if not auth.get(key)]
    providers = [auth, *(value for value in auth.values() if isinstance(value, Mapping))]
    if not any(all(provider.get(key) for key in PROVIDER_KEYS) for provider in providers):
        missing.append("a provider's " + ", ".join(PROVIDER_KEYS))
    if missing:
        return "the [auth] section lacks " + "; ".join(missing)
    if authlib_installed is None:
        authlib_installed = importlib.util.find_spec("authlib") is not None
    if not authlib_installed:
        return "Streamlit's login needs Authlib: pip install 'latent-labeller[auth]'"
    return None


def login_redirect_uri(files: Sequence[Path]) -> str | None:
    """The login's ``redirect_uri`` when the login in ``files`` is configured and can work, else None."""
    if login_problem(files) is not None:
        return None
    auth: dict[str, object] = {}
    for path in files:
        if path.is_file():
            auth.update(tomllib.loads(path.read_text(encoding="utf-8")).get("auth", {}))
    return str(auth.get("redirect_uri") or "") or None


def check_host(project: Project, host: str) -> None:
    """Refuse to listen beyond this machine without a working login: anyone who reached the port could
    label as anyone, import and train."""
    if is_loopback(host):
        return
    if problem := login_problem(secrets_files(project)):
        raise ServeError(
            f"refusing to listen on {host} without a login: {problem}. Configure Streamlit's OIDC login in "
            f"{project.root / SECRETS_FILE} ([auth] with redirect_uri, cookie_secret, client_id, client_secret "
            f"and server_metadata_url; see the README's Security section), or leave out --host to listen on "
            f"this machine only"
        )


def port_in_use(port: int) -> bool:
    """True when something listens on ``port``, over IPv4 (Streamlit would fail to bind it after starting) or on
    IPv6's [::1] (the printed http://localhost:PORT may reach that other process first)."""
    return port_in_use_ipv4(port) or port_in_use_ipv6(port)


def port_in_use_ipv4(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR ignores connections closing (TIME_WAIT), never a listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def port_in_use_ipv6(port: int) -> bool:
    """True when something listens on [::1]:``port`` (or on [::]); False where this machine has no IPv6."""
    if not socket.has_ipv6:
        return False
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False  # IPv6 switched off: localhost is 127.0.0.1 only
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind(("::1", port))
        except OSError as error:
            return error.errno in (errno.EADDRINUSE, errno.EACCES)  # EADDRNOTAVAIL: no ::1 here
    return False


def free_port() -> int:
    """A port free on 127.0.0.1 and on [::1] (both are localhost)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not port_in_use_ipv6(port):
            return port
    return port


def streamlit_flags(config_file: Path = STREAMLIT_CONFIG, overrides: Mapping[str, object] | None = None) -> list[str]:
    """The repository's ``.streamlit/config.toml`` as command-line flags, then ``overrides``.

    ``streamlit run`` reads that file only from its working directory; flags make the theme, upload limit
    and XSRF protection hold wherever ``labeller serve`` is started from. A list becomes one flag per item.
    """
    options: dict[str, object] = {}
    if config_file.is_file():
        for section, values in tomllib.loads(config_file.read_text()).items():
            options.update({f"{section}.{key}": value for key, value in values.items()})
    options.update(REQUIRED_OPTIONS)
    options.update(overrides or {})
    flags: list[str] = []
    for name, value in options.items():
        for item in value if isinstance(value, list) else [value]:
            flags += [f"--{name}", str(item).lower() if isinstance(item, bool) else str(item)]
    return flags


def streamlit_command(project: Project, port: int, host: str = DEFAULT_HOST) -> list[str]:
    files = secrets_files(project)
    overrides = {
        "server.address": host,
        "server.port": port,
        "secrets.files": [str(path) for path in files],
        # Streamlit refuses a websocket under any other Host header (DNS rebinding); the app checks it too.
        "server.allowedHosts": allowed_hosts(host, login_redirect_uri(files)),
    }
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_ENTRY),
        *streamlit_flags(overrides=overrides),
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


def start(project: Project, *, port: int | None = None, with_worker: bool = True, host: str = DEFAULT_HOST) -> Served:
    """Start the app (and a worker) as child processes; the caller stops them with ``stop``."""
    if not APP_ENTRY.is_file():
        raise FileNotFoundError(f"the app entry point {APP_ENTRY} is missing")
    check_host(project, host)
    if port is not None and port_in_use(port):
        where = "on [::1] (IPv6 localhost)" if not port_in_use_ipv4(port) else ""
        raise ServeError(
            f"port {port} is in use{' ' + where if where else ''}: another program listens there and the "
            "printed localhost address could reach it; pick another with --port, or leave --port out for a free one"
        )
    port = port or free_port()
    app = _spawn(streamlit_command(project, port, host), project)
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


def serve(project: Project, *, port: int | None = None, with_worker: bool = True, host: str = DEFAULT_HOST) -> int:
    """Run until Ctrl-C or SIGTERM (or the app exits); restart a worker that dies. Returns the app's exit code.

    Both signals are handled explicitly: a process started in the background inherits an ignored SIGINT,
    and a plain SIGTERM (``docker stop``, systemd) would otherwise leave the app and worker, which run in
    sessions of their own, behind."""
    # SIGHUP too: a closed terminal or SSH session stops the children instead of orphaning them.
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _stop_requested) for sig in stop_signals}
    try:
        return _run(project, port=port, with_worker=with_worker, host=host)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(project: Project, *, port: int | None, with_worker: bool, host: str) -> int:
    served = start(project, port=port, with_worker=with_worker, host=host)
    restarts = 0
    try:
        # The URL only once the app answers: a URL printed before a failed start sends people nowhere.
        if not wait_until_healthy(served, timeout=HEALTH_TIMEOUT_S):
            print(f"the app did not start (exit code {served.app.returncode}); see its messages above", file=sys.stderr)
            return served.app.returncode or 1
        where = "" if is_loopback(host) else f", listening on {host} with login"
        # Flushed: under systemd, docker or a pipe, stdout is block-buffered and the URL would wait for exit.
        print(
            f"Latent Labeller: {served.url}{where}  (Ctrl-C stops the app{' and its worker' if with_worker else ''})",
            flush=True,
        )
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
