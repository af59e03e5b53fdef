"""Every file a1jax reads or writes goes through here: local paths and `gs://` (any fsspec URL) alike.

Local paths keep plain `os` calls, so their behaviour (atomic renames, memory-mapped arrays) is what it always was.
URLs go through etils `epath`, the path layer orbax already uses for checkpoints: one library, one set of
credentials and one emulator setting for everything a run writes. Without TensorFlow, epath reaches `gs://` through
fsspec's `gcsfs` (a dependency of a1jax); tensorstore (orbax's array writer) and tensorboardX's event writer
talk to GCS directly and read the same environment (GOOGLE_APPLICATION_CREDENTIALS, or the VM's service account).

Atomicity on object storage: an object appears whole when its upload completes, or not at all, so `write_atomic` is
one object write there (a temporary file and a rename locally). Object storage has no append: files that grow
(metrics.jsonl, TensorBoard events) are rewritten whole at each flush (`a1jax.train.metrics.MetricWriter`).

Emulator (tests, trying a pod launch without a cloud account): STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT points
gcsfs and google-cloud-storage at it, TENSORSTORE_GCS_HTTP_URL the same URL points tensorstore at it
(docs/launching.md).
"""
from __future__ import annotations

import builtins
import hashlib
import json
import os
import socket
import threading
import uuid

# Seconds a first contact with object storage may take before it counts as unreachable (gcsfs retries a refused
# connection with backoff for about a minute; a run should say what is wrong well before that).
TIMEOUT_S = float(os.environ.get("A1JAX_STORAGE_TIMEOUT", "60"))


class StorageError(OSError):
    """A storage location that cannot be reached or written (bad credentials, unreachable endpoint, no bucket)."""


def is_remote(path) -> bool:
    """True for URLs (`gs://bucket/dir`), False for local paths."""
    return "://" in os.fspath(path)


def _epath(path):
    from etils import epath
    path = os.fspath(path)
    if path.startswith("gs://"):
        try:
            import gcsfs  # noqa: F401  epath's fsspec backend needs it (absent TensorFlow)
        except ImportError:
            raise ImportError(f"{path}: gs:// paths need gcsfs (a dependency of a1jax); pip install gcsfs") from None
    return epath.Path(path)


def join(path, *parts) -> str:
    return os.path.join(os.fspath(path), *parts)


def abspath(path) -> str:
    """Absolute local path; a URL as it is (without a trailing slash)."""
    path = os.fspath(path)
    return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def exists(path) -> bool:
    return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path) -> bool:
    return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path) -> bool:
    return _epath(path).is_file() if is_remote(path) else os.path.isfile(path)


def getsize(path) -> int:
    return _epath(path).stat().length if is_remote(path) else os.path.getsize(path)


def listdir(path) -> list[str]:
    """Names in a directory (a URL: the objects and prefixes right under it)."""
    return sorted(p.name for p in _epath(path).iterdir()) if is_remote(path) else os.listdir(path)


def open(path, mode: str = "r"):  # noqa: A001 - the module's one way to open a file
    return _epath(path).open(mode) if is_remote(path) else builtins.open(path, mode)


def read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_text(path) -> str:
    return read_bytes(path).decode()


def read_json(path):
    return json.loads(read_text(path))


def write_atomic(path, data: str | bytes) -> None:
    """Readers see the old file or the new one, never a part: a temporary file renamed into place locally, one
    object write (objects appear whole) on object storage."""
    data = data.encode() if isinstance(data, str) else data
    if is_remote(path):
        _epath(path).write_bytes(data)
        return
    tmp = os.fspath(path) + ".tmp"
    with builtins.open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def save_json(path, obj, *, indent: int = 2) -> None:
    """Atomic small-file write (config.json and the like)."""
    write_atomic(path, json.dumps(obj, indent=indent, sort_keys=True, default=str))


def replace(src, dst) -> None:
    """Renames a file or directory (on object storage: a copy of every object, then a delete; not atomic, so use it
    only where a partial move is harmless, e.g. setting a damaged checkpoint aside)."""
    if is_remote(src):
        fs, (s, d) = _fs(src), (os.fspath(src), os.fspath(dst))
        fs.mv(s, d, recursive=fs.isdir(s))
    else:
        os.replace(src, dst)


def upload(local: str, path) -> None:
    """Copies a local file to `path` (a URL: one object, whole when the upload completes; a local path: a copy
    renamed into place)."""
    if is_remote(path):
        _fs(path).put_file(local, os.fspath(path))
        return
    import shutil
    tmp = os.fspath(path) + ".tmp"
    shutil.copyfile(local, tmp)
    os.replace(tmp, path)


def remove(path) -> None:
    if is_remote(path):
        _epath(path).unlink()
    else:
        os.remove(path)


def _fs(path):
    from etils.epath import backend
    _epath(path)
    return backend.fsspec_backend.fs(os.fspath(path))


def walk_files(root) -> list[str]:
    """Every file under `root`, as sorted paths relative to it."""
    root = os.fspath(root)
    out = []
    if is_remote(root):
        prefix = root.split("://", 1)[1].rstrip("/") + "/"
        for full in _fs(root).find(root):
            out.append(full[len(prefix):] if full.startswith(prefix) else full)
    else:
        for dirpath, _, names in os.walk(root):
            out.extend(os.path.relpath(os.path.join(dirpath, n), root) for n in names)
    return sorted(out)


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def makedirs(path) -> None:
    """Creates a local directory; for a URL, checks that it can be written (object storage has no directories),
    raising StorageError naming `path` within TIMEOUT_S when it cannot."""
    if is_remote(path):
        check_writable(path)
    else:
        os.makedirs(path, exist_ok=True)


def check_writable(path, timeout_s: float | None = None) -> None:
    """Writes, reads back and deletes a small probe object under `path`; one StorageError naming `path` on any
    failure (missing or bad credentials, unknown bucket, unreachable endpoint) or when it takes over `timeout_s`."""
    timeout_s = TIMEOUT_S if timeout_s is None else timeout_s
    probe = join(path, f".a1jax-probe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    result: dict = {}

    def attempt():
        try:
            p = _epath(probe)
            p.write_bytes(b"a1jax")
            if p.read_bytes() != b"a1jax":
                raise OSError("the probe object read back differs from what was written")
            p.unlink()
        except BaseException as e:  # noqa: BLE001 - reported below, whatever it is
            result["error"] = e
        result["done"] = True

    thread = threading.Thread(target=attempt, name="a1jax-storage-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    hint = ("check the credentials (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`, or the "
            "VM's service account), that the bucket exists, and STORAGE_EMULATOR_HOST if you use an emulator")
    if not result.get("done"):
        raise StorageError(f"{path}: no answer from the storage endpoint within {timeout_s:.0f}s "
                           f"(A1JAX_STORAGE_TIMEOUT); {hint}")
    if "error" in result:
        e = result["error"]
        if isinstance(e, ImportError):
            raise e
        first = str(e).splitlines()[0][:300] if str(e) else ""
        raise StorageError(f"{path}: cannot write there ({type(e).__name__}: {first}); {hint}") from None
