"""Tracking stores: which URI a sweep writes to, a check that fails fast on one it could not write, a form
of it fit to print (secrets redacted), and opening a store (SQLite: under a lock, from a cached empty store)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


SECRET_WORDS = ("token", "password", "secret", "key")   # a URI query key holding one of these is a secret


def redact_uri(uri: str | None) -> str | None:
    """A tracking URI fit to print, log or save: a password in it (``http://user:pw@host``,
    ``postgresql://u:pw@db/x``) and token/password/key query values become ``***``."""
    if not uri or "://" not in uri:
        return uri
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
    u = urlsplit(uri)
    netloc = u.netloc
    secret_query = any(w in k.lower() for k, _ in parse_qsl(u.query) for w in SECRET_WORDS)
    if "@" not in netloc and not secret_query:
        return uri   # nothing to hide (sqlite:////path, http://host:port)
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = u.query
    if query:
        pairs = [(k, "***" if any(w in k.lower() for w in SECRET_WORDS) else v)
                 for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return urlunsplit((u.scheme, netloc, u.path, query, u.fragment))


def default_tracking_uri(experiment_dir: Path) -> str:
    return f"sqlite:///{Path(experiment_dir).resolve() / 'mlflow.db'}"


def check_tracking_uri(uri: str) -> None:
    """Fail fast (one line) on a tracking store a sweep could not write: an http(s) server that does
    not answer, a sqlite file in a folder that cannot be created or written."""
    from urllib.parse import urlparse
    from ..core.errors import UsageError
    import socket
    u = urlparse(uri)
    shown = redact_uri(uri)
    if u.scheme in ("http", "https"):
        port = u.port or (443 if u.scheme == "https" else 80)
        try:
            with socket.create_connection((u.hostname or "127.0.0.1", port), timeout=5):
                return
        except OSError as e:
            raise UsageError(f"--tracking-uri {shown}: no MLflow server answers there ({e.strerror or e}); start "
                             f"one (mlflow server --host 127.0.0.1) or leave the flag out for a SQLite file in "
                             f"the experiment folder") from None
    if u.scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        if path is None or str(path) in ("", ":memory:"):
            raise UsageError(f"--tracking-uri {shown}: use sqlite:////absolute/path/mlflow.db")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not os.access(folder, os.W_OK):
            raise UsageError(f"--tracking-uri {shown}: {folder} is not writable; choose another path")
    elif u.scheme in ("", "file"):
        raise UsageError(f"--tracking-uri {shown}: MLflow's file store is retired; use sqlite:///PATH/mlflow.db "
                         f"or an http(s) server")


@contextmanager
def sqlite_init_lock(uri: str):
    """For a ``sqlite:///`` store: hold an exclusive lock on ``<db>.lock`` while the store is opened.

    MLflow creates and migrates the tables of a new SQLite file on first use, and that is not safe
    with several processes at once (alembic "duplicate column", "Online migration expected to match
    one row", checked with 4 processes on MLflow 3.17); two sweeps creating the same experiment race
    too. Writes after that are safe: every MLflow session sets ``busy_timeout = 20000``, and
    tests/test_faults.py runs several writers at once. Other stores: no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl
    path = Path(uri[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_client(uri: str):
    """An MlflowClient on ``uri``. A new SQLite file starts as a copy of an empty store that this machine
    made once per MLflow version (``$MIXKD_CACHE/mlflow/empty-<version>.db``): creating and migrating
    MLflow's tables costs 2-3 s of CPU, which a sweep's first trial would otherwise share its CPUs
    with; the copy takes milliseconds. Call it under :func:`sqlite_init_lock`."""
    import mlflow
    from mlflow.tracking import MlflowClient
    path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    if path is None or path.exists():
        return MlflowClient(uri)
    from ..core.data import cache_dir
    template = cache_dir() / "mlflow" / f"empty-{mlflow.__version__}.db"
    if template.is_file() and _copy_sqlite(template, path, default_artifacts=_default_artifact_location()):
        return MlflowClient(uri)
    client = MlflowClient(uri)   # creates and migrates the tables (and MLflow's Default experiment)
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        _copy_sqlite(path, template)
    except OSError:   # a read-only cache only costs the next sweep its 2-3 s
        pass
    return client


def _default_artifact_location() -> str | None:
    """Where MLflow puts the Default experiment's artifacts when it creates a store from this process."""
    try:
        from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
        from mlflow.utils.uri import append_to_uri_path, resolve_uri_if_local
        return append_to_uri_path(resolve_uri_if_local(DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH), "0")
    except ImportError:
        return None


def _copy_sqlite(src: Path, dest: Path, default_artifacts: str | None = None) -> bool:
    """A consistent copy of SQLite file ``src`` at ``dest`` (written beside it, then renamed into place)."""
    import sqlite3
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as a, sqlite3.connect(tmp) as b:
            a.backup(b)
            if default_artifacts is not None:
                b.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (default_artifacts,))
        os.replace(tmp, dest)
        return True
    except (OSError, sqlite3.Error):
        tmp.unlink(missing_ok=True)
        return False
