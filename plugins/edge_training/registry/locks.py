"""Locks that serialise champion promotions of one model across processes and hosts.

* :func:`file_lock` - an exclusive ``flock`` on a file beside the registry's store (SQLite database or file
  store). Every process that can open the store can open the lock file; the kernel releases it when the holder
  dies, so a crashed promotion never blocks the next one.
* :func:`mlflow_lease` - for an MLflow tracking server, whose store we cannot lock (and which edge workers and
  central workers on different hosts share over HTTP). The lease is one registered model that provisioning creates
  (``<model>.champion-lease``, see :func:`lease_names`) and that is never deleted: a promotion takes it by renaming it
  to ``<model>.champion-lease.held`` and gives it back by renaming it again. A rename is atomic on the server (the
  name is the store's primary key), so exactly one caller's rename succeeds, and MLflow's auth moves the users'
  grants with the name. (Creating and deleting a model per promotion would not do: the server's delete hook sweeps
  every grant of the name after the delete, so a lease created by the next promotion in between loses its grant
  and nobody could read or release it.) The held lease records its owner and an expiry: a holder that died is
  taken over after ``ttl_s``, after re-reading that the expired owner is still the one recorded.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge_training.exceptions import ModelRegistryError

log = logging.getLogger(__name__)

LEASE_OWNER_TAG = "edge.lease_owner"
LEASE_EXPIRES_TAG = "edge.lease_expires_epoch"
DEFAULT_WAIT_S = 120.0
DEFAULT_LEASE_TTL_S = 120.0
_POLL_S = 0.05
# Neither lease name readable for this long is no rename's moment (milliseconds) but a lease that is not there.
MISSING_LEASE_S = 5.0


@contextmanager
def file_lock(path: Path, *, wait_s: float = DEFAULT_WAIT_S) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    :param path: The lock file; put it beside the store so every promoter of that store uses the same one.
    :param wait_s: Give up after this many seconds of waiting.
    :raises ModelRegistryError: the lock was not free within ``wait_s``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise ModelRegistryError(
                        f"Model registry: waited {wait_s:.0f} s for the champion lock {path}, which another "
                        "promotion still holds. Retry the task; if no registration or rollback is running, a "
                        "process holding the file open is stuck (find it with `fuser` and stop it)."
                    ) from None
                time.sleep(_POLL_S)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def lease_names(model_name: str) -> tuple[str, str]:
    """The registered-model names of ``model_name``'s champion lease: ``(free, held)``."""
    free = f"{model_name}.champion-lease"
    return free, f"{free}.held"


@contextmanager
def mlflow_lease(
    client, model_name: str, *, wait_s: float = DEFAULT_WAIT_S, ttl_s: float = DEFAULT_LEASE_TTL_S
) -> Iterator[None]:
    """Hold the champion lease of ``model_name`` on an MLflow server for the ``with`` block.

    :param client: An ``MlflowClient`` of the registry.
    :param model_name: The registered model whose champion is being moved.
    :param wait_s: Give up after this many seconds of waiting.
    :param ttl_s: A lease held longer than this is taken to be left by a holder that died.
    :raises ModelRegistryError: the lease was not free within ``wait_s``, or it does not exist on the server.
    """
    free, held = lease_names(model_name)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + wait_s
    seen, unreadable_since = None, None
    while not _rename(client, free, held):
        # Taken, or in a rename's moment (under auth a name that does not exist, or whose grants the rename is
        # still moving, is refused with 403).
        holder = _read_lease(client, held)
        if holder is not None:
            seen, unreadable_since = "held", None
            _take_over_if_expired(client, free, held, *holder, ttl_s)
        elif _read_lease(client, free) is not None:
            seen, unreadable_since = "free", None
        else:
            unreadable_since = unreadable_since or time.monotonic()
            if time.monotonic() - unreadable_since > MISSING_LEASE_S:
                raise ModelRegistryError(_not_free_message(free, held, MISSING_LEASE_S, ttl_s, seen=None))
        if time.monotonic() > deadline:
            raise ModelRegistryError(_not_free_message(free, held, wait_s, ttl_s, seen=seen))
        time.sleep(_POLL_S * 4)
    tagged = False
    try:
        client.set_registered_model_tag(held, LEASE_OWNER_TAG, owner)
        tagged = True
        client.set_registered_model_tag(held, LEASE_EXPIRES_TAG, f"{time.time() + ttl_s:.3f}")
        yield
    finally:
        lease = _read_lease(client, held)
        current = lease[0].get(LEASE_OWNER_TAG) if lease else None
        if tagged and current != owner:
            log.warning("Champion lease %s was taken over (now %s) before this promotion released it", held, current)
        elif not _rename(client, held, free):
            log.warning("Could not give back champion lease %s; it is taken back after %.0f s", held, ttl_s)


def _rename(client, name: str, new_name: str) -> bool:
    """Rename the registered model ``name``; False when it does not exist (any more), or is not ours to rename."""
    from mlflow.exceptions import MlflowException

    try:
        client.rename_registered_model(name, new_name)
        return True
    except (MlflowException, ModelRegistryError):  # 404, 403 (auth: gone), or a concurrent rename that lost (500)
        return False


def _read_lease(client, name: str) -> tuple[dict, float] | None:
    """``(tags, epoch seconds of its last change)`` of the registered model ``name``; None when it cannot be read."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except (MlflowException, ModelRegistryError):
        return None
    return dict(model.tags), (model.last_updated_timestamp or 0) / 1000


def _take_over_if_expired(client, free: str, held: str, tags: dict, updated_s: float, ttl_s: float) -> None:
    # Taken at most ttl_s ago (the rename that took it stamps the model) or not yet expired by its owner's tag.
    try:
        by_tag = float(tags.get(LEASE_EXPIRES_TAG, "0"))
    except ValueError:
        by_tag = 0.0
    if max(by_tag, updated_s + ttl_s) > time.time():
        return
    # Re-read just before renaming: only the expired holder's lease is given back, never a fresh one.
    if _read_lease(client, held) == (tags, updated_s):
        if _rename(client, held, free):
            log.warning("Took back champion lease %s left by %s (expired)", held, tags.get(LEASE_OWNER_TAG))


def _not_free_message(free: str, held: str, wait_s: float, ttl_s: float, *, seen: str | None) -> str:
    if seen == "held":
        return (
            f"Model registry: waited {wait_s:.0f} s for the champion lease {free!r}, which another promotion holds "
            f"(as {held!r}). Retry the task; a lease left by a stopped worker is taken back after {ttl_s:.0f} s."
        )
    if seen == "free":
        return (
            f"Model registry: the champion lease {free!r} is free but this user could not rename it to {held!r} "
            f"for {wait_s:.0f} s. Have the MLflow admin grant EDIT on {free!r} to every user that promotes "
            "(scripts/mlflow_server.py provision does it)."
        )
    return (
        f"Model registry: checked the champion lease of this model on the MLflow server: neither {free!r} nor "
        f"{held!r} could be read by this user for {wait_s:.0f} s. Provision it (scripts/mlflow_server.py start "
        "--model <name>, or provision --url for a running server), or have the MLflow admin create the registered "
        f"model {free!r} and grant EDIT on it to every user that promotes."
    )
