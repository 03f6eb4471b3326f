#!/usr/bin/env python3
"""Train the failure-prediction model on the edge VM, next to its data, and export it as ONNX.

Shipped to the edge VM and run there in a venv built from ``requirements.txt`` beside this file. It reads the
training window straight from Stack Hub blob storage, so only the model and its metrics ever leave the VM.

Usage::

    python train.py --container sensor-readings --start 2026-11-01 --end 2026-11-08 --out OUT_DIR \\
        --scratch SCRATCH_DIR [--champion CHAMPION.onnx] [--holdout-days 1] \\
        [--params '{"n_estimators": 200, "max_depth": 6}'] [--seed 0] [--manifest MANIFEST.json] \
        [--connection-string-file PATH | --data-dir DIR]

Blob credentials come from ``--connection-string-file`` (an owner-only file, mode 0600, deleted as soon as it has
been read) or the environment variable ``EDGE_BLOB_CONNECTION_STRING``; they are never printed, and every URL is
logged without its query (a SAS token there is a credential). With ``--data-dir`` (where an Azure ML job mounts the
container) the partitions are read from that folder and no credentials are needed. Blob layout:
``dt=YYYY-MM-DD/part-NNNN.csv`` (CSV with a header row), one folder ("partition") per day; which blobs are data is
decided by ``blob_manifest.is_data_blob`` (markers such as ``_SUCCESS`` are not). The training window is the days
``start`` up to ``end`` (exclusive); its newest ``--holdout-days`` day(s) are the holdout, the earlier days train
the model.

``--manifest`` names the JSON document of exactly the blobs ``validate_data`` validated
(``{"validation_id", "data_fingerprint", "blobs": [{"name", "etag", "content_md5", "size"}]}``). The window is then
not listed: those blobs, and only those, are downloaded, each on the condition that its ETag is unchanged
(If-Match), and their size and Content-MD5 are checked. A blob that changed or vanished since validation fails the
job with exit code 2, naming it. On a mounted folder (``--data-dir``) sizes and MD5s are checked.

The model is a scikit-learn ``RandomForestClassifier`` (skl2onnx converts it exactly) on the numeric sensor
features; ``--params`` takes its hyperparameters (``random_state`` comes from ``--seed``).

Outputs, and nothing else, in ``OUT_DIR``:

- ``model.onnx``: float32 input named ``input`` (columns in the order of ``features`` in metrics.json), outputs
  ``label`` and ``probabilities`` (column 1 = probability of a failure within 24 h).
- ``metrics.json``: holdout metrics (``roc_auc`` is the primary one), ``champion_metrics`` (the ``--champion`` model
  scored on the same holdout, or null), features, training and holdout windows, row counts, the
  ``data_fingerprint`` of the blobs read (``blob_manifest.data_fingerprint``, the scheme validation uses, so the
  two are equal when training read what was validated), ``training_seconds``, library versions, the
  ONNX-vs-scikit-learn parity check and ``evaluation`` (holdout aggregates from ``evaluation.py``: bootstrap
  intervals, confusion counts, binned curves, calibration).

``SCRATCH_DIR`` holds downloaded partitions while they are parsed and is removed at the end, also on failure.

Holdout metrics (scored with the exported ONNX model, threshold 0.5 for f1/accuracy): ``roc_auc``, ``pr_auc``
(average precision), ``f1``, ``accuracy``, ``positive_rate`` (share of holdout rows labelled 1),
``predicted_positive_rate``, ``n_train``, ``n_holdout`` (``n_train`` is null in ``champion_metrics``). Rows with a
missing feature or label are dropped and counted in ``rows.dropped_incomplete``.

Exit codes: 0 success; 2 the request cannot succeed as given (bad arguments, credentials refused, a training window
without usable data, a blob changed since validation) - retrying will not help; 1 any other failure (network, out of memory, ...) - may be retried;
143 stopped by SIGTERM (scratch still removed).
Progress goes to stderr, one line per step; the last line says what happened. No data rows are ever printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

FEATURES = ["temperature_c", "vibration_mm_s", "pressure_bar", "rpm", "humidity_pct", "power_kw"]
LABEL = "failure_within_24h"
ONNX_INPUT = "input"
PARITY_TOLERANCE = 1e-4
# A balance of quality and model size: the ONNX file grows with trees x leaves and is baked into the scoring image.
DEFAULT_PARAMS = {
    "n_estimators": 200,
    "max_depth": 8,
    "min_samples_leaf": 5,
    # Failures are rare (a few %): without reweighting the forest never predicts one at the 0.5 threshold.
    "class_weight": "balanced_subsample",
    # The edge VM is shared (other jobs, the site's own services): a bounded share of its cores, never all of them.
    # training_params may ask for 1..4 (plugins/edge_training/training_params.py).
    "n_jobs": 2,
}
# random_state is --seed; the others would only change logging or incremental fitting, never the model asked for.
RESERVED_PARAMS = {"random_state", "verbose", "warm_start"}
SCRATCH_MARKER = ".edge-training-scratch"
DOWNLOAD_CHUNK_BYTES = 4 * 1024 * 1024
CONNECTION_STRING_ENV = "EDGE_BLOB_CONNECTION_STRING"
OUTPUT_FILES = ("model.onnx", "metrics.json", "reference_profile.json")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("train")


def _load_sibling(name: str):
    # Loaded by path, not imported: train.py also runs loaded from a file by path (tests), not only as a script.
    spec = importlib.util.spec_from_file_location(f"edge_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The data-blob rule and the fingerprint scheme validation uses too: the two sides agree by construction.
blob_manifest = _load_sibling("blob_manifest")
# The URL/secret redaction the Airflow side uses too (edge_training.redact).
redact = _load_sibling("redact")


class UsageError(Exception):
    """The request cannot succeed as given; the message says what was checked, what was found and what to do."""


class Terminated(BaseException):
    """The job was stopped by a signal (e.g. the Airflow task was killed); raised so clean-up still runs.

    A BaseException, like KeyboardInterrupt, so that no library's ``except Exception`` swallows it mid-fit.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.exit_code = 128 + signum  # the shell's convention: 143 for SIGTERM


# ---------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train.py", description="Train the failure-prediction model on a training window of blob data."
    )
    parser.add_argument("--container", required=True, help="blob container holding the dt=YYYY-MM-DD/ partitions")
    parser.add_argument("--start", required=True, help="first day of the training window, YYYY-MM-DD")
    parser.add_argument("--end", required=True, help="day after the last day of the training window, YYYY-MM-DD")
    parser.add_argument("--out", required=True, type=Path, help="folder for model.onnx and metrics.json")
    parser.add_argument("--scratch", required=True, type=Path, help="temporary folder, removed at the end")
    parser.add_argument("--champion", type=Path, help="current champion model (ONNX) to score on the same holdout")
    parser.add_argument("--holdout-days", type=int, default=1, help="newest days of the window held out (default 1)")
    parser.add_argument("--params", default="{}", help="JSON object of RandomForestClassifier hyperparameters")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--connection-string-file", type=Path,
        help=f"owner-only file holding the blob connection string (default: env {CONNECTION_STRING_ENV})",
    )
    parser.add_argument(
        "--data-dir", type=Path,
        help="read the dt=YYYY-MM-DD/ partitions from this folder (e.g. an Azure ML job's mounted uri_folder input) "
             "instead of blob storage; --container is then only recorded",
    )
    parser.add_argument(
        "--manifest", type=Path,
        help="JSON manifest of exactly the blobs validate_data validated; they are read (If-Match their ETags) "
             "instead of listing the window",
    )
    parser.add_argument(
        "--profile-grid",
        help="JSON {feature: {lo, hi, bins}} from the expectation suite's ranges: also write the training window's "
             "privacy-safe data profile as reference_profile.json (data_profile.py; drift is measured against it)",
    )
    parser.add_argument("--profile-k", type=int, help="suppress profile bins of fewer rows (default: data_profile's)")
    # Tests read the same layout from a local folder (SOURCE_DIR/<container>/dt=.../part-NNNN.csv).
    parser.add_argument("--source-dir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _parse_day(value: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{flag} must be a day as YYYY-MM-DD; got {value!r}. Pass e.g. {flag} 2026-11-01.") from None


def window_days(start: dt.date, end: dt.date) -> list[dt.date]:
    """Days of the training window ``start`` .. ``end`` (end exclusive)."""
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]


def split_window(days: list[dt.date], holdout_days: int) -> tuple[list[dt.date], list[dt.date]]:
    """Split the window into (train days, holdout days): the holdout is the newest ``holdout_days`` days."""
    if len(days) < 2:
        raise UsageError(
            f"The training window has {len(days)} day(s); it needs at least 2 (older days train the model, the "
            f"newest day is the holdout). Widen the window: --end is exclusive, so --start 2026-11-01 --end "
            f"2026-11-03 covers two days."
        )
    if not 1 <= holdout_days < len(days):
        raise UsageError(
            f"--holdout-days is {holdout_days} but the training window has {len(days)} days; it must be between 1 "
            f"and {len(days) - 1} so that at least one day is left to train on."
        )
    return days[:-holdout_days], days[-holdout_days:]


def model_params(raw: str) -> dict:
    """Hyperparameters for the classifier: ``DEFAULT_PARAMS`` overridden by the ``--params`` JSON object."""
    try:
        given = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--params must be a JSON object; it does not parse ({exc}). Example: "
                         '--params \'{"n_estimators": 200, "max_depth": 6}\'') from None
    if not isinstance(given, dict):
        raise UsageError(f"--params must be a JSON object; got a {type(given).__name__}. Example: "
                         '--params \'{"n_estimators": 200, "max_depth": 6}\'')
    from sklearn.ensemble import RandomForestClassifier

    allowed = sorted(set(RandomForestClassifier().get_params()) - RESERVED_PARAMS)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        hint = " (use --seed for the random seed)" if "random_state" in unknown else ""
        raise UsageError(f"--params has unsupported key(s) {unknown}{hint}. The model is a RandomForestClassifier; "
                         f"allowed keys: {allowed}.")
    params = {**DEFAULT_PARAMS, **given}
    try:
        # Checked now, not at fit time, so a typo fails before a large training window is downloaded.
        RandomForestClassifier(**params)._validate_params()
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--params is not valid for RandomForestClassifier: {exc}") from None
    return params


def read_connection_string(path: Path | None) -> str:
    """The blob connection string from ``path`` (deleted once read: it must not outlive its use) or the env."""
    if path is not None:
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise UsageError(f"--connection-string-file {path} cannot be read ({exc.strerror}). "
                             f"Pass the file the blob connection string was written to.") from None
        if mode & 0o077:
            raise UsageError(f"--connection-string-file {path} has mode {oct(mode & 0o777)}; a file holding "
                             f"credentials must be readable by its owner only. Run: chmod 600 {path}")
        value = path.read_text(encoding="utf-8").strip()
        # Read once at start-up: nothing later needs the file, and a credential on disk is one more to steal.
        path.unlink()
        log.info("read the blob credentials and removed %s", path)
        origin = f"file {path}"
    else:
        value = os.environ.get(CONNECTION_STRING_ENV, "").strip()
        origin = f"env {CONNECTION_STRING_ENV}"
        if not value:
            raise UsageError(f"No blob credentials: neither --connection-string-file nor env {CONNECTION_STRING_ENV} "
                             f"is set. Pass one of them (the edge_blob connection's connection string).")
    if not value:
        raise UsageError(f"The blob connection string in {origin} is empty. Write the edge_blob connection's "
                         f"connection string there.")
    return value


def read_manifest(path: Path) -> dict:
    """The manifest of the blobs validation checked: ``{"validation_id", "data_fingerprint", "blobs": [...]}``.

    Each blob entry is ``{"name", "etag", "content_md5", "size"}``. The document's ``data_fingerprint`` (when
    given) must match its blobs, so a truncated or hand-edited manifest is refused rather than trained on.
    """
    advice = "Re-run the DAG run from validate_data, which writes the manifest training reads."
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--manifest {path} cannot be read ({exc.strerror}). {advice}") from None
    except ValueError as exc:
        raise UsageError(f"--manifest {path} is not JSON ({exc}). {advice}") from None
    blobs = document.get("blobs") if isinstance(document, dict) else None
    if not isinstance(blobs, list):
        raise UsageError(f"--manifest {path} has no list 'blobs' (found {type(document).__name__} with keys "
                         f"{sorted(document) if isinstance(document, dict) else []}). {advice}")
    for i, entry in enumerate(blobs):
        ok = (isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"]
              and isinstance(entry.get("size"), int) and entry["size"] >= 0
              and isinstance(entry.get("etag"), (str, type(None)))
              and isinstance(entry.get("content_md5"), (str, type(None))))
        if not ok:
            raise UsageError(f"--manifest {path}: entry {i} is not {{name, etag, content_md5, size}} with a name "
                             f"and a size >= 0. {advice}")
    expected = document.get("data_fingerprint")
    if expected and blob_manifest.data_fingerprint(blobs) != expected:
        raise UsageError(f"--manifest {path}: its {len(blobs)} blob(s) do not add up to its data_fingerprint "
                         f"{expected}; the manifest is incomplete or was edited. {advice}")
    return {"validation_id": document.get("validation_id"), "data_fingerprint": expected, "blobs": blobs}


class RedactingFormatter(logging.Formatter):
    """Formats like ``logging.Formatter``, then redacts: no log line of the job can carry a credential."""

    def format(self, record: logging.LogRecord) -> str:
        return redact.redact_text(super().format(record))


# ---------------------------------------------------------------------------------------------------------------
# Reading the training window
# ---------------------------------------------------------------------------------------------------------------


def partition_name(day: dt.date) -> str:
    return f"dt={day.isoformat()}"


def _copy_hashed(chunks, dest: Path) -> tuple[int, str]:
    """Write ``chunks`` to ``dest``; return (bytes written, MD5 hex of them)."""
    size, md5 = 0, hashlib.md5(usedforsecurity=False)
    with open(dest, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
            md5.update(chunk)
            size += len(chunk)
    return size, md5.hexdigest()


def _changed(name: str, what: str) -> str:
    return f"{name} {what}"


def _expected_md5(entry: dict | None) -> str | None:
    md5 = (entry or {}).get("content_md5")
    return md5.lower() if md5 else None


class BlobChanged(UsageError):
    """Blobs of the manifest changed or vanished since validation: training them would train unvalidated data."""

    MAX_SHOWN = 20

    def __init__(self, problems: list[str], validation_id: str | None = None) -> None:
        self.problems = problems
        shown = "; ".join(problems[: self.MAX_SHOWN])
        more = f"; and {len(problems) - self.MAX_SHOWN} more" if len(problems) > self.MAX_SHOWN else ""
        super().__init__(
            f"{len(problems)} blob(s) of the training window changed since validation"
            f"{f' {validation_id}' if validation_id else ''}: {shown}{more}. Training reads exactly the blobs "
            f"validate_data checked, so nothing was trained. Re-run this DAG run from validate_data (clear "
            f"validate_data and its downstream tasks) to validate the current data and train on it."
        )


class LocalSource:
    """The blob layout mirrored in a local folder: ``root/<container>/dt=YYYY-MM-DD/part-NNNN.csv``.

    A mounted folder has no ETags: a manifest's blobs are checked by size and, where the manifest has one, MD5.
    """

    def __init__(self, root: Path, container: str) -> None:
        self.root = root / container
        self.where = f"local folder {self.root}"
        if not self.root.is_dir():
            raise UsageError(f"Data folder {self.root} does not exist. Check --data-dir (or --source-dir and "
                             f"--container).")

    def list_parts(self, day: dt.date) -> list[str]:
        folder = self.root / partition_name(day)
        if not folder.is_dir():
            return []
        return sorted(f"{partition_name(day)}/{p.name}" for p in folder.iterdir())

    def check(self, entries: list[dict]) -> list[str]:
        """Blobs of the manifest that are gone or have another size now (cheap: one stat each)."""
        problems = []
        for entry in entries:
            try:
                size = (self.root / entry["name"]).stat().st_size
            except FileNotFoundError:
                problems.append(_changed(entry["name"], "is gone"))
                continue
            if size != entry["size"]:
                problems.append(_changed(entry["name"], f"is now {size} bytes, validated at {entry['size']}"))
        return problems

    def download(self, name: str, dest: Path, expected: dict | None = None) -> dict:
        """Copy one part to ``dest``; return the manifest entry of what was read, plus its ``md5``."""
        try:
            with open(self.root / name, "rb") as src:
                size, md5 = _copy_hashed(iter(lambda: src.read(DOWNLOAD_CHUNK_BYTES), b""), dest)
        except FileNotFoundError:
            if expected is None:
                raise
            raise BlobChanged([_changed(name, "is gone")]) from None
        if expected is None:
            return {"name": name, "etag": None, "content_md5": md5, "size": size, "md5": md5}
        # What was read is the validated version when size and (if known) MD5 match: fingerprint it as such.
        return {"name": name, "etag": expected.get("etag"), "content_md5": md5 if _expected_md5(expected) else None,
                "size": size, "md5": md5}


class BlobSource:
    """Partitions in an Azure (Stack Hub) blob container, downloaded in chunks."""

    def __init__(self, connection_string: str, container: str) -> None:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.storage.blob import BlobServiceClient

        try:
            service = BlobServiceClient.from_connection_string(
                connection_string, max_chunk_get_size=DOWNLOAD_CHUNK_BYTES, max_single_get_size=DOWNLOAD_CHUNK_BYTES
            )
        except ValueError:
            # The library's message may quote the malformed string, which holds the account key.
            raise UsageError("The blob connection string is malformed (it did not parse). Check the edge_blob "
                             "connection's connection string.") from None
        self.container = service.get_container_client(container)
        # service.url carries the SAS query (…&sig=…) when the credential is a SAS: never show it.
        endpoint = redact.redact_url(service.url).rstrip("/")
        self.where = f"container {container} at {endpoint}"
        try:
            # A one-blob listing: it needs only the read+list a container-scoped SAS grants.
            list(next(self.container.list_blobs(results_per_page=1).by_page(), []))
        except ResourceNotFoundError:
            raise UsageError(f"Blob container {container!r} does not exist at {endpoint}. Check --container and "
                             f"the edge_blob connection's endpoint.") from None
        except HttpResponseError as exc:
            # Azure says AuthenticationFailed (ClientAuthenticationError), Azurite AuthorizationFailure: both 403.
            if exc.status_code not in (401, 403):
                raise
            raise UsageError(f"Blob storage at {endpoint} refused the credentials (HTTP {exc.status_code} "
                             f"{exc.error_code}). Check the account key / SAS token in the edge_blob connection "
                             f"(a SAS needs read and list permission on the container and must not have "
                             f"expired).") from None

    def list_parts(self, day: dt.date) -> list[str]:
        return sorted(b.name for b in self.container.list_blobs(name_starts_with=partition_name(day) + "/"))

    @staticmethod
    def _if_unchanged(expected: dict | None) -> dict:
        from azure.core import MatchConditions

        if not expected or not expected.get("etag"):
            return {}
        return {"etag": expected["etag"], "match_condition": MatchConditions.IfNotModified}

    def check(self, entries: list[dict]) -> list[str]:
        """Blobs of the manifest that changed (ETag, size, MD5) or are gone, by their properties (no download)."""
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        problems = []
        for entry in entries:
            try:
                props = self.container.get_blob_client(entry["name"]).get_blob_properties(**self._if_unchanged(entry))
            except ResourceModifiedError:
                problems.append(self._failed_condition(entry))
                continue
            except ResourceNotFoundError:
                problems.append(_changed(entry["name"], "is gone"))
                continue
            problems += self._mismatch(entry, int(props.size), props.content_settings.content_md5)
        return problems

    def _failed_condition(self, entry: dict) -> str:
        """Why If-Match failed: some stores answer 412 rather than 404 for a blob deleted since."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.container.get_blob_client(entry["name"]).get_blob_properties()
        except ResourceNotFoundError:
            return _changed(entry["name"], "is gone")
        return _changed(entry["name"], f"was rewritten (ETag no longer {entry['etag']})")

    @staticmethod
    def _mismatch(entry: dict, size: int, stored_md5) -> list[str]:
        if size != entry["size"]:
            return [_changed(entry["name"], f"is now {size} bytes, validated at {entry['size']}")]
        md5 = bytes(stored_md5).hex() if stored_md5 else None
        if _expected_md5(entry) and md5 and md5 != _expected_md5(entry):
            return [_changed(entry["name"], "has another Content-MD5 than validated")]
        return []

    def download(self, name: str, dest: Path, expected: dict | None = None) -> dict:
        """Download one part to ``dest`` (If-Match the manifest's ETag); return the manifest entry of what was read."""
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            # Every range request carries the same If-Match: a rewrite half-way through fails, never mixes versions.
            downloader = self.container.download_blob(name, max_concurrency=1, **self._if_unchanged(expected))
            size, md5 = _copy_hashed(downloader.chunks(), dest)
        except ResourceModifiedError:
            raise BlobChanged([self._failed_condition(expected)]) from None
        except ResourceNotFoundError:
            if expected is None:
                raise
            raise BlobChanged([_changed(name, "is gone")]) from None
        props = downloader.properties
        stored = props.content_settings.content_md5 if props.content_settings else None
        return {"name": name, "etag": props.etag, "content_md5": bytes(stored).hex() if stored else None,
                "size": size, "md5": md5}


def read_part(path: Path, name: str):
    """Parse one CSV part: features as float32, label as float (so missing labels stay visible as NaN)."""
    import pandas as pd

    try:
        header = list(pd.read_csv(path, nrows=0).columns)
    except pd.errors.EmptyDataError:
        raise UsageError(f"{name} is empty (not even a header row). Re-export that part or remove it.") from None
    missing = [c for c in FEATURES + [LABEL] if c not in header]
    if missing:
        raise UsageError(f"{name} lacks column(s) {missing}; its header has {header}. Every part needs "
                         f"{FEATURES + [LABEL]}. Fix the export, then re-run.")
    try:
        frame = pd.read_csv(path, usecols=FEATURES + [LABEL], dtype={c: "float32" for c in FEATURES}
                            | {LABEL: "float64"})
    except (ValueError, pd.errors.ParserError) as exc:
        # pandas names the offending field value at most, never a whole row.
        raise UsageError(f"{name} does not parse as numeric sensor readings: {str(exc)[:300]}. Fix that part "
                         f"(the validate_data step should have caught it), then re-run.") from None
    return frame


def load_window(source, days: list[dt.date], scratch: Path, manifest: dict | None = None):
    """Download and parse every part of every day; returns (frame with a ``day`` column, per-partition stats,
    data fingerprint of the blobs read).

    :param manifest: the blobs validation checked (see :func:`read_manifest`): exactly those are read, each checked
        against its entry; None lists each day's data blobs instead.
    """
    import pandas as pd

    by_day: dict[str, list[dict]] = {}
    if manifest is not None:
        wanted = {partition_name(day) for day in days}
        outside = sorted(e["name"] for e in manifest["blobs"]
                         if e["name"].split("/", 1)[0] not in wanted or not blob_manifest.is_data_blob(e["name"]))
        if outside:
            raise UsageError(
                f"The manifest of validation {manifest['validation_id']} lists {len(outside)} blob(s) that are not "
                f"data blobs of the training window {partition_name(days[0])}..{partition_name(days[-1])}, e.g. "
                f"{outside[:3]}: validation and training disagree on the window. Re-run the DAG run from "
                f"validate_data."
            )
        for entry in manifest["blobs"]:
            by_day.setdefault(entry["name"].split("/", 1)[0], []).append(entry)
        # Everything is checked before the first download: a changed blob fails in seconds, naming all of them.
        problems = source.check(manifest["blobs"])
        if problems:
            raise BlobChanged(problems, manifest["validation_id"])
        log.info("reading the %d blob(s) validation %s checked (no listing; each must be unchanged)",
                 len(manifest["blobs"]), manifest["validation_id"])

    frames, partitions, read, missing = [], [], [], []
    for day in days:
        started = time.monotonic()
        if manifest is not None:
            entries = sorted(by_day.get(partition_name(day), []), key=lambda e: e["name"])
        else:
            names = source.list_parts(day)
            entries = [{"name": n} for n in names if blob_manifest.is_data_blob(n)]
            if len(entries) != len(names):
                log.info("%s: ignoring %d object(s) that are not data (markers, checksums, ...)",
                         partition_name(day), len(names) - len(entries))
        rows = size = 0
        for entry in entries:
            name = entry["name"]
            expected = entry if manifest is not None else None
            local = scratch / name.replace("/", "_")
            try:
                got = source.download(name, local, expected)
            except BlobChanged as exc:
                raise BlobChanged(exc.problems, manifest["validation_id"]) from None
            if expected is not None:
                changed = BlobSource._mismatch(expected, got["size"], None)
                if not changed and _expected_md5(expected) and got["md5"] != _expected_md5(expected):
                    changed = [_changed(name, "has another MD5 than validated")]
                if changed:
                    local.unlink()
                    raise BlobChanged(changed, manifest["validation_id"])
            size += got["size"]
            frame = read_part(local, name)
            local.unlink()  # keeps the scratch folder at one part's size
            frame["day"] = day.toordinal()
            frames.append(frame)
            rows += len(frame)
            read.append({k: got[k] for k in ("name", "etag", "content_md5", "size")})
        if rows == 0:
            missing.append(partition_name(day))
            log.info("%s: no rows (%d part file(s))", partition_name(day), len(entries))
            continue
        partitions.append({"partition": partition_name(day), "parts": len(entries), "rows": rows, "bytes": size})
        log.info("%s: %d part(s), %d rows, %.1f MB in %.2f s", partition_name(day), len(entries), rows,
                 size / 1e6, time.monotonic() - started)
    if missing:
        raise UsageError(
            f"The training window {partition_name(days[0])}..{partition_name(days[-1])} has no data for "
            f"{len(missing)} of its {len(days)} day(s): {missing} in {source.where}. Upload those partitions "
            f"(dt=YYYY-MM-DD/part-NNNN.csv), or train on a window that has data for every day."
        )
    fingerprint = blob_manifest.data_fingerprint(read)
    if manifest is not None and manifest["data_fingerprint"] and fingerprint != manifest["data_fingerprint"]:
        # Every blob matched its entry, so the data is the validated data; only how a version is spelled differs.
        log.warning("the blobs read have data fingerprint %s, validation %s recorded %s (same blobs, sizes and "
                    "ETags/MD5s were checked)", fingerprint, manifest["validation_id"], manifest["data_fingerprint"])
    return pd.concat(frames, ignore_index=True), partitions, fingerprint


def window_profile(frame, grid_json: str, k: int) -> dict:
    """The training window's published data profile (``data_profile.py`` beside this file: counts, no rows)."""
    data_profile = _load_sibling("data_profile")
    try:
        grid = json.loads(grid_json)
        return data_profile.publish_by_day(frame, {f: grid[f] for f in FEATURES}, "day", k or data_profile.DEFAULT_K)
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--profile-grid must be a JSON object with {{lo, hi, bins}} for each of {FEATURES}; "
                         f"it does not fit ({type(exc).__name__}: {exc}). Pass the grid of the expectation suite.") from None


def prepare_rows(frame, train_days: list[dt.date], holdout_days: list[dt.date]) -> dict:
    """Drop incomplete rows, check the labels, and split by day into train and holdout arrays."""
    import numpy as np

    complete = frame[FEATURES + [LABEL]].notna().all(axis=1)
    dropped = int((~complete).sum())
    if dropped:
        log.info("dropping %d row(s) with a missing feature or label value", dropped)
    frame = frame[complete]
    bad_labels = int((~frame[LABEL].isin([0, 1])).sum())
    if bad_labels:
        raise UsageError(f"{bad_labels} row(s) have a {LABEL} value other than 0 or 1. Fix the data (the "
                         f"validate_data step should have caught it), then re-run.")
    holdout_mask = frame["day"].isin([d.toordinal() for d in holdout_days]).to_numpy()
    x = frame[FEATURES].to_numpy(dtype=np.float32)
    y = frame[LABEL].to_numpy(dtype=np.int64)
    split = {"x_train": x[~holdout_mask], "y_train": y[~holdout_mask], "x_holdout": x[holdout_mask],
             "y_holdout": y[holdout_mask], "dropped": dropped}
    for part, days in (("train", train_days), ("holdout", holdout_days)):
        labels = split[f"y_{part}"]
        if len(np.unique(labels)) < 2:
            raise UsageError(
                f"The {part} days {partition_name(days[0])}..{partition_name(days[-1])} have {len(labels)} rows, "
                f"all with {LABEL}={int(labels[0]) if len(labels) else 'none'}; both classes are needed to "
                f"{'train' if part == 'train' else 'measure roc_auc'}. Widen the training window"
                f"{'' if part == 'train' else ' or raise --holdout-days'}."
            )
    return split


# ---------------------------------------------------------------------------------------------------------------
# Model, ONNX export and evaluation
# ---------------------------------------------------------------------------------------------------------------


def to_onnx_model(model, params: dict):
    import onnx
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(model, initial_types=[(ONNX_INPUT, FloatTensorType([None, len(FEATURES)]))],
                  options={id(model): {"zipmap": False}})
    # Travels with the file, so whoever scores it later (serving image, the next run's champion check) knows the
    # column order without metrics.json.
    onnx.helper.set_model_props(onx, {"features": json.dumps(FEATURES), "label": LABEL,
                                      "estimator": type(model).__name__, "params": json.dumps(params, sort_keys=True)})
    return onx


def positive_probabilities(session, x):
    """Probability of class 1 from an ONNX classifier session (tensor or ZipMap output)."""
    import numpy as np

    inputs = session.get_inputs()
    feed = x.astype(np.float64) if inputs[0].type == "tensor(double)" else x
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    wanted = "probabilities" if "probabilities" in names else names[-1]
    (proba,) = session.run([wanted], {inputs[0].name: feed})
    if isinstance(proba, list):  # ZipMap: one {class: probability} dict per row
        return np.array([row[1] for row in proba], dtype=np.float64)
    return np.asarray(proba, dtype=np.float64)[:, 1]


def holdout_metrics(y, proba, n_train: int | None) -> dict:
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

    predicted = (proba >= 0.5).astype(int)
    return {
        "roc_auc": float(roc_auc_score(y, proba)),
        "pr_auc": float(average_precision_score(y, proba)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "accuracy": float(accuracy_score(y, predicted)),
        "positive_rate": float(y.mean()),
        "predicted_positive_rate": float(predicted.mean()),
        "n_train": n_train,
        "n_holdout": int(len(y)),
    }


def open_champion(path: Path):
    """Load the champion model and work out which of our features it takes, in its own order."""
    import onnx
    import onnxruntime as ort

    try:
        model = onnx.load(str(path))
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnx and onnxruntime raise several unrelated types for a bad file
        raise UsageError(f"--champion {path} is not a loadable ONNX model ({type(exc).__name__}: "
                         f"{str(exc)[:200]}). Pass the champion's model.onnx, or run without --champion.") from None
    props = {p.key: p.value for p in model.metadata_props}
    features = json.loads(props["features"]) if "features" in props else list(FEATURES)
    unknown = [f for f in features if f not in FEATURES]
    inputs = session.get_inputs()
    width = inputs[0].shape[-1] if len(inputs) == 1 and inputs[0].shape else None
    if unknown or len(inputs) != 1 or (isinstance(width, int) and width != len(features)):
        raise UsageError(
            f"--champion {path} cannot be scored on this data: it takes inputs "
            f"{[(i.name, i.shape) for i in inputs]} and features {features} (unknown here: {unknown}); this run "
            f"has features {FEATURES}. Register this run's model with force_promote, or run without --champion."
        )
    return session, [FEATURES.index(f) for f in features]


def library_versions() -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy", "pandas", "azure-storage-blob"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


# ---------------------------------------------------------------------------------------------------------------
# Scratch and output folders
# ---------------------------------------------------------------------------------------------------------------


def claim_scratch(scratch: Path) -> None:
    """Create the scratch folder, or reuse one an earlier attempt left; never adopt a folder with foreign files."""
    if scratch.exists():
        contents = list(scratch.iterdir()) if scratch.is_dir() else None
        if contents is None or (contents and not (scratch / SCRATCH_MARKER).exists()):
            raise UsageError(
                f"--scratch {scratch} already exists and holds files this script did not create; it is removed "
                f"at the end, so it must be a new or empty folder. Pass a fresh path (e.g. under /tmp)."
            )
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / SCRATCH_MARKER).touch()


def release_scratch(scratch: Path) -> None:
    if (scratch / SCRATCH_MARKER).exists():
        shutil.rmtree(scratch, ignore_errors=True)
        log.info("removed scratch folder %s", scratch)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------


def train(args: argparse.Namespace) -> dict:
    """Run one training job; returns the metrics document written next to the model."""
    started_at = time.monotonic()
    start, end = _parse_day(args.start, "--start"), _parse_day(args.end, "--end")
    if end <= start:
        raise UsageError(f"--end {end} is not after --start {start}; --end is the day after the last day of the "
                         f"training window (exclusive). Swap them or move --end later.")
    days = window_days(start, end)
    train_days, holdout_days = split_window(days, args.holdout_days)
    params = model_params(args.params)
    if args.champion is not None and not args.champion.is_file():
        raise UsageError(f"--champion {args.champion} does not exist. Pass the champion's model.onnx, or run "
                         f"without --champion when there is no champion yet.")
    manifest = read_manifest(args.manifest) if args.manifest is not None else None
    if args.data_dir is not None:
        source = LocalSource(args.data_dir, "")
    elif args.source_dir is not None:
        source = LocalSource(args.source_dir, args.container)
    else:
        source = BlobSource(read_connection_string(args.connection_string_file), args.container)

    args.out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        # A model left by an earlier attempt must not pass for this run's result.
        (args.out / name).unlink(missing_ok=True)
    claim_scratch(args.scratch)

    log.info("training window %s..%s (%d days, end exclusive) from %s; holdout: newest %d day(s)",
             start, end, len(days), source.where, len(holdout_days))
    frame, partitions, fingerprint = load_window(source, days, args.scratch, manifest)
    rows_read = len(frame)
    reference_profile = window_profile(frame, args.profile_grid, args.profile_k) if args.profile_grid else None
    split = prepare_rows(frame, train_days, holdout_days)
    del frame
    n_train, n_holdout = len(split["y_train"]), len(split["y_holdout"])
    log.info("read %d rows in %.1f s: %d train, %d holdout", rows_read, time.monotonic() - started_at,
             n_train, n_holdout)

    import numpy as np
    import onnxruntime as ort
    from sklearn.ensemble import RandomForestClassifier

    log.info("training RandomForestClassifier %s seed=%d", json.dumps(params, sort_keys=True), args.seed)
    fit_started = time.monotonic()
    model = RandomForestClassifier(random_state=args.seed, **params).fit(split["x_train"], split["y_train"])
    training_seconds = time.monotonic() - fit_started
    log.info("trained in %.1f s", training_seconds)

    onx = to_onnx_model(model, params)
    model_bytes = onx.SerializeToString()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    onnx_proba = positive_probabilities(session, split["x_holdout"])
    sklearn_proba = model.predict_proba(split["x_holdout"])[:, 1]
    max_abs_diff = float(np.max(np.abs(onnx_proba - sklearn_proba)))
    if not max_abs_diff <= PARITY_TOLERANCE:
        raise RuntimeError(
            f"ONNX parity check failed: onnxruntime and scikit-learn probabilities differ by up to {max_abs_diff:.3g} "
            f"on the {n_holdout} holdout rows (tolerance {PARITY_TOLERANCE}); the exported model would not score "
            f"like the trained one, so nothing was written. Check that skl2onnx/onnxruntime match requirements.txt."
        )
    log.info("ONNX parity ok: max abs difference %.3g on %d holdout rows", max_abs_diff, n_holdout)

    # The exported model is what will be served, so it is what gets scored (and compared with the champion).
    metrics = holdout_metrics(split["y_holdout"], onnx_proba, n_train)
    log.info("holdout: roc_auc=%.4f pr_auc=%.4f f1=%.4f accuracy=%.4f", metrics["roc_auc"], metrics["pr_auc"],
             metrics["f1"], metrics["accuracy"])
    # Aggregates only (intervals, confusion counts, binned curves, calibration): they feed the model card.
    from evaluation import holdout_evaluation  # ships beside this script

    evaluation = holdout_evaluation(split["y_holdout"], onnx_proba, seed=args.seed)
    champion_metrics = None
    if args.champion is not None:
        champion, columns = open_champion(args.champion)
        champion_proba = positive_probabilities(champion, split["x_holdout"][:, columns])
        champion_metrics = holdout_metrics(split["y_holdout"], champion_proba, None)
        log.info("champion %s on the same holdout: roc_auc=%.4f", args.champion, champion_metrics["roc_auc"])

    document = {
        "schema_version": 1,
        "metrics": metrics,
        "champion_metrics": champion_metrics,
        "evaluation": evaluation,
        "primary_metric": "roc_auc",
        "features": FEATURES,
        "label": LABEL,
        "model": {"estimator": "RandomForestClassifier", "params": params, "seed": args.seed, "format": "onnx",
                  "input": ONNX_INPUT, "input_type": "float32", "probability_output": "probabilities",
                  "opsets": {o.domain or "ai.onnx": o.version for o in onx.opset_import}},
        "container": args.container,
        "window": {"start": start.isoformat(), "end": end.isoformat(), "days": len(days)},
        "train_window": {"start": train_days[0].isoformat(),
                         "end": (train_days[-1] + dt.timedelta(days=1)).isoformat(), "days": len(train_days)},
        "holdout_window": {"start": holdout_days[0].isoformat(), "end": end.isoformat(), "days": len(holdout_days)},
        "rows": {"read": rows_read, "dropped_incomplete": split["dropped"], "train": n_train, "holdout": n_holdout},
        "partitions": partitions,
        "data_fingerprint": fingerprint,
        # Which validation's manifest was trained (None: the window was listed, not pinned to a validation).
        "data_manifest": None if manifest is None else {"validation_id": manifest["validation_id"],
                                                        "blobs": len(manifest["blobs"])},
        "onnx_parity": {"max_abs_diff": max_abs_diff, "tolerance": PARITY_TOLERANCE, "rows_compared": n_holdout,
                        "passed": True},
        "training_seconds": round(training_seconds, 3),
        "total_seconds": round(time.monotonic() - started_at, 3),
        "versions": library_versions(),
    }
    write_atomically(args.out / "model.onnx", model_bytes)
    if reference_profile is not None:
        write_atomically(args.out / "reference_profile.json", (json.dumps(reference_profile) + "\n").encode())
    # metrics.json last: its presence means the run finished.
    write_atomically(args.out / "metrics.json", (json.dumps(document, indent=2) + "\n").encode())
    log.info("wrote %s (%.1f KB) and metrics.json", args.out / "model.onnx", len(model_bytes) / 1e3)
    return document


def _on_signal(signum, frame):
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s train: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(True)  # library warnings go through the redacting handler too
    # The Azure SDK logs every request at INFO; URLs and redacted headers would drown the progress lines.
    logging.getLogger("azure").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _on_signal)
    args = parse_args(argv)  # argparse itself exits 2 on malformed arguments
    try:
        document = train(args)
    except UsageError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except Terminated as exc:
        log.error("training %s", exc)
        return exc.exit_code
    except (Exception, KeyboardInterrupt) as exc:
        tail = traceback.format_exc().strip().splitlines()[-12:]
        log.error("training failed (%s); traceback tail:\n%s", type(exc).__name__, "\n".join(tail))
        return EXIT_FAILURE
    finally:
        release_scratch(args.scratch)
    champion = document["champion_metrics"]
    log.info("done: roc_auc=%.4f on %d holdout rows%s", document["metrics"]["roc_auc"],
             document["metrics"]["n_holdout"],
             f" (champion {champion['roc_auc']:.4f})" if champion else " (no champion given)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
