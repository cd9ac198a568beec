"""The embedded mode's MLflow server (and UI) on its sqlite database, a child process.

Writes need a credential, as on the stack's server: it runs MLflow's authentication app (basic
auth) with one account, ``eostream``, whose password is made once per home and kept there
(``mlflow-password``, readable by its owner only). The processes of the home use it
(:func:`logged_in` sets MLflow's client variables); anyone else on the machine gets 401, where
any local process could register versions, move aliases and write the tags the bridge reads.

A process that outlives the sessions using a home (the notebooks' pytest run) can *advertise*
its server in ``<home>/mlflow-server.json`` (URL and pid): :func:`home_mlflow_server` then
reuses it instead of starting another one on the same database, and starts its own only when
none is advertised or the advertised one is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from eostream.runner.processes import DIE_WITH_PARENT
from eostream.shared.errors import ConfigError

#: Under the home: the advertised server, ``{"url": ..., "pid": ...}``.
STATE_FILE = "mlflow-server.json"
#: The account of the home's server, and the files (under the home) of its secrets.
USERNAME = "eostream"
PASSWORD_FILE = "mlflow-password"  # noqa: S105 - a file name
_FLASK_KEY_FILE = "mlflow-flask-key"
_AUTH_DB = "mlflow-auth.db"
_CLIENT_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def _secret(path: Path) -> tuple[str, bool]:
    """The secret kept in ``path``, made (owner-only) on first use; whether it was made now.
    Written whole under another name, then linked into place: a session reading at the same
    moment finds no file or the whole secret, never an empty one."""
    try:
        return path.read_text(encoding="utf-8").strip(), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        os.link(tmp, path)
        made = True
    except FileExistsError:  # another session of the home made it first
        made = False
    finally:
        os.unlink(tmp)
    return path.read_text(encoding="utf-8").strip(), made


def credentials(home: Path) -> tuple[str, str]:
    """The user name and password of the home's MLflow server. A password made now starts a
    new account store: MLflow sets the admin's password only when it creates the account, so
    the old store would refuse the new password for good."""
    password, made = _secret(home / PASSWORD_FILE)
    if made:
        (home / _AUTH_DB).unlink(missing_ok=True)
    return USERNAME, password


#: the homes whose account this process's MLflow clients use, and how many blocks use each
_LOGINS: dict[Path, int] = {}
_BEFORE: dict[str, str | None] = {}


@contextlib.contextmanager
def logged_in(home: Path) -> Iterator[None]:
    """MLflow's clients in this process use the home server's account until the last block of
    the home ends (they read ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` on every request, one
    account per process: sessions of two homes at once in one process use the later's)."""
    home = home.resolve()
    if not _LOGINS:
        _BEFORE.update({name: os.environ.get(name) for name in _CLIENT_VARIABLES})
    _LOGINS[home] = _LOGINS.get(home, 0) + 1
    ours = dict(zip(_CLIENT_VARIABLES, credentials(home), strict=True))
    os.environ.update(ours)
    try:
        yield
    finally:
        _LOGINS[home] -= 1
        if not _LOGINS[home]:
            del _LOGINS[home]
        # what someone else set since is theirs: only the account this block set is undone
        if all(os.environ.get(name) == value for name, value in ours.items()):
            _log_out()


def _log_out() -> None:
    """The account of a home whose session is still open, else what was there before."""
    if _LOGINS:
        os.environ.update(zip(_CLIENT_VARIABLES, credentials(next(iter(_LOGINS))), strict=True))
        return
    for name, value in _BEFORE.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _auth_settings(home: Path) -> Path:
    """The authentication app's settings (its own sqlite store of accounts beside the tracking
    one), rewritten at each start."""
    path = home / "mlflow-auth.ini"
    text = (
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        # configparser reads % as interpolation: a home path may hold one
        f"database_uri = sqlite:///{str(home / _AUTH_DB).replace('%', '%%')}\n"
        f"admin_username = {USERNAME}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # a password check is ~0.9 s of CPU (PBKDF2): once per 10 minutes, not per request
        "auth_cache_ttl_seconds = 600\n"
    )
    path.write_text(text, encoding="utf-8")
    return path


def free_port(host: str, preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind((host, preferred))
        except OSError:
            s.bind((host, 0))
        return int(s.getsockname()[1])


def start_mlflow_server(home: Path, host: str, port: int) -> subprocess.Popen[bytes]:
    """Launch the server on the home's sqlite database without waiting for it; it dies with
    this process."""
    (home / "mlartifacts").mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
        "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination", str(home / "mlartifacts"),
        "--serve-artifacts", "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_AUTH_CONFIG_PATH": str(_auth_settings(home)),
        "MLFLOW_AUTH_ADMIN_USERNAME": USERNAME,
        "MLFLOW_AUTH_ADMIN_PASSWORD": credentials(home)[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(home / _FLASK_KEY_FILE)[0],
    }
    with (home / "mlflow.log").open("ab") as log_file:
        return subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            # a SIGKILLed demo must not leave its MLflow server running
            preexec_fn=DIE_WITH_PARENT,  # prctl only; resolved before the fork
        )


def wait_healthy(
    url: str,
    alive: Callable[[], bool],
    log_path: Path,
    timeout: float,
    *,
    cancelled: Callable[[], bool] | None = None,
) -> None:
    """Return once ``url`` answers /health; ConfigError when the server ends or times out, or
    as soon as ``cancelled()`` is true (its caller was asked to stop)."""
    deadline = time.monotonic() + timeout
    while True:
        if cancelled is not None and cancelled():
            raise ConfigError("stopped while waiting for the MLflow server")
        if not alive():
            raise ConfigError(f"the MLflow server did not start; see {log_path}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise ConfigError(
                f"the MLflow server did not answer within {timeout:.0f} s; see {log_path}"
            )
        time.sleep(0.5)


def stop_mlflow_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@contextlib.contextmanager
def mlflow_server(
    home: Path,
    host: str,
    port: int,
    *,
    timeout: float = 120,
    meanwhile: Callable[[], object] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """An MLflow tracking server (and UI) on the embedded sqlite database; ConfigError when it
    does not answer within ``timeout`` seconds, or ``cancelled()`` turns true first. ``meanwhile``
    runs (on this thread) while the server starts: the server takes ~8-10 s to answer, time this
    process can use, e.g. to import the services
    (:func:`eostream.shared.embedded.discover_components`)."""
    process = start_mlflow_server(home, host, port)
    url = f"http://{host}:{port}"
    try:
        if meanwhile is not None:
            meanwhile()
        wait_healthy(
            url, lambda: process.poll() is None, home / "mlflow.log", timeout, cancelled=cancelled
        )
        with logged_in(home):
            yield url
    finally:
        stop_mlflow_server(process)


@contextlib.contextmanager
def advertised_mlflow_server(home: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """Start the home's server (without waiting for it) and advertise it to every session on
    the home until the block ends; then withdraw and stop it."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port(host, 0)
    process = start_mlflow_server(home, host, port)
    url = f"http://{host}:{port}"
    state = home / STATE_FILE
    state.write_text(json.dumps({"url": url, "pid": process.pid}), encoding="utf-8")
    try:
        with logged_in(home):
            yield url
    finally:
        state.unlink(missing_ok=True)
        stop_mlflow_server(process)


def advertised(home: Path) -> tuple[str, int] | None:
    """The URL and pid of the server advertised on the home, when its process still runs."""
    try:
        state = json.loads((home / STATE_FILE).read_text(encoding="utf-8"))
        url, pid = str(state["url"]), int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (url, pid) if _is_mlflow(pid) else None


def _is_mlflow(pid: int) -> bool:
    if Path("/proc").is_dir():  # a recycled pid is no MLflow server
        try:
            return b"mlflow" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def home_mlflow_server(
    home: Path,
    host: str,
    *,
    timeout: float = 120,
    meanwhile: Callable[[], object] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """The server advertised on the home (once healthy) when there is one, else one of this
    process, stopped at the end of the block (``meanwhile``, ``cancelled``: as
    :func:`mlflow_server`'s)."""
    found = advertised(home)
    if found is not None:
        url, pid = found
        if meanwhile is not None:
            meanwhile()
        wait_healthy(
            url, lambda: _is_mlflow(pid), home / "mlflow.log", timeout, cancelled=cancelled
        )
        with logged_in(home):
            yield url
        return
    port = free_port(host, 0)
    with mlflow_server(
        home, host, port, timeout=timeout, meanwhile=meanwhile, cancelled=cancelled
    ) as url:
        yield url
