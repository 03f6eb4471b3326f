"""Locks that serialise champion promotions of one model across processes and hosts.

* :func:`file_lock` - an exclusive ``flock`` on a file beside the registry's store (SQLite database or file
  store). Every process that can open the store can open the lock file; the kernel releases it when the holder
  dies, so a crashed promotion never blocks the next one.
* :func:`mlflow_lease` - for an MLflow tracking server, whose store we cannot lock (and which edge workers and
  central workers on different hosts share over HTTP): creating a registered model
  is atomic on the server (its name is a unique key), so "create ``<model>.champion-lease``" grants the lease to
  exactly one caller; deleting it releases it. The lease records its owner and an expiry: a holder that died is
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


@contextmanager
def mlflow_lease(
    client, model_name: str, *, wait_s: float = DEFAULT_WAIT_S, ttl_s: float = DEFAULT_LEASE_TTL_S
) -> Iterator[None]:
    """Hold the champion lease of ``model_name`` on an MLflow server for the ``with`` block.

    :param client: An ``MlflowClient`` of the registry.
    :param model_name: The registered model whose champion is being moved.
    :param wait_s: Give up after this many seconds of waiting.
    :param ttl_s: A lease older than this is taken to be left by a holder that died.
    :raises ModelRegistryError: the lease was not free within ``wait_s``.
    """
    from mlflow.exceptions import MlflowException

    lease = f"{model_name}.champion-lease"
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(
                lease,
                tags={LEASE_OWNER_TAG: owner, LEASE_EXPIRES_TAG: f"{time.time() + ttl_s:.3f}"},
                description=f"Champion lease of model {model_name}: held while a promotion moves the alias.",
            )
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        _take_over_if_expired(client, lease)
        if time.monotonic() > deadline:
            raise ModelRegistryError(
                f"Model registry: waited {wait_s:.0f} s for the champion lease {lease!r}, which another promotion "
                f"holds. Retry the task; a lease left by a stopped worker expires after {ttl_s:.0f} s."
            )
        time.sleep(_POLL_S * 4)
    try:
        yield
    finally:
        try:
            current = client.get_registered_model(lease).tags.get(LEASE_OWNER_TAG)
            if current == owner:
                client.delete_registered_model(lease)
            else:
                log.warning("Champion lease %s was taken over (now %s) before this promotion released it", lease, current)
        except (MlflowException, ModelRegistryError) as exc:  # incl. a server refusing the delete (403)
            log.warning("Could not release champion lease %s (%s); it expires by itself", lease, exc)


def _take_over_if_expired(client, lease: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(lease).tags
    except MlflowException:
        return  # released meanwhile: the next create may win
    try:
        expires = float(tags.get(LEASE_EXPIRES_TAG, "0"))
    except ValueError:
        expires = 0.0
    if expires > time.time():
        return
    stale = tags.get(LEASE_OWNER_TAG)
    try:
        # Re-read just before deleting: only the expired owner's lease is removed, never a fresh one.
        if client.get_registered_model(lease).tags.get(LEASE_OWNER_TAG) == stale:
            log.warning("Taking over champion lease %s left by %s (expired)", lease, stale)
            client.delete_registered_model(lease)
    except MlflowException:
        pass
