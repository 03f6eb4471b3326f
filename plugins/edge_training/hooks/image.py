"""Container images without a daemon: ``buildah`` on a storage of its own, and an OCI registry over HTTP API v2.

* :class:`Buildah` - build (chroot isolation, vfs storage under ``EDGE_BUILDAH_ROOT``), run the image's server for
  a smoke test (``buildah run``: the chroot shares the host's network, so the server answers on a loopback port),
  push, remove. Nothing touches ``/var/lib/containers``.
* :class:`ImageRegistryHook` - the ``image_registry`` connection (host = login server, login, password; extra
  ``tls_verify``, default true): check the credentials, read manifests and image labels, and hand buildah the
  credentials in a private temporary auth file - never on a command line. The same code serves ACR (service
  principal app id + secret, bearer-token challenge) and a registry with htpasswd (basic challenge).
* :func:`download_wheels` - the scoring image's Python packages, fetched once with ``pip download`` for the image's
  Python and platform, so the image build itself installs offline.

Errors: :class:`ImageRegistryAuthError` (refused credentials: fails at once), :class:`ImageRegistryUnavailableError`
(down or unreachable: retried), :class:`ImageBuildError`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from airflow.sdk import BaseHook

from edge_training import config
from edge_training.exceptions import (
    ImageBuildError,
    ImageRegistryAuthError,
    ImageRegistryError,
    ImageRegistryUnavailableError,
)
from edge_training.image_context import registry_host, wheel_platforms, wheels_cache_name

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
# What buildah's push error text says when the registry cannot be reached (as opposed to refusing us).
_UNREACHABLE_HINTS = (
    "connection refused", "no such host", "i/o timeout", "connection reset", "network is unreachable",
    "eof", "tls handshake timeout", "server misbehaving", "503", "502", "500 internal",
)
_AUTH_HINTS = ("unauthorized", "authentication required", "401", "denied: requested access")


def _tail(text: str, limit: int = 800) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request_json(url: str, payload: object | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    """GET (or POST ``payload`` as JSON) and return ``(status, JSON body)``, for 4xx/5xx answers too."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback server
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


# ----------------------------------------------------------------------------------------------------------------
# buildah
# ----------------------------------------------------------------------------------------------------------------


class Buildah:
    """The ``buildah`` CLI on its own storage (vfs driver: works without overlay support, needs no daemon).

    :param root: storage root (images, layers, build cache).
    :param runroot: runtime state folder.
    :param executable: the buildah binary.
    """

    def __init__(
        self,
        root: Path | str = config.BUILDAH_ROOT,
        runroot: Path | str = config.BUILDAH_RUNROOT,
        executable: str = "buildah",
    ) -> None:
        self.root = Path(root)
        self.runroot = Path(runroot)
        self.executable = executable

    def argv(self, *args: str) -> list[str]:
        found = shutil.which(self.executable)
        if found is None:
            raise ImageBuildError(
                f"Checked PATH for {self.executable!r}: not found. Install buildah (apt-get install buildah); the "
                "scoring image is built with it, without a Docker daemon."
            )
        return [
            found, "--root", str(self.root), "--runroot", str(self.runroot), "--storage-driver", "vfs", *args,
        ]  # fmt: skip

    def run(self, *args: str, what: str, timeout: float = 300.0) -> str:
        """Run one buildah command; return its stdout.

        :raises ImageBuildError: it failed or timed out (the message carries the end of its output).
        """
        try:
            result = subprocess.run(
                self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False,
                env={**os.environ, "BUILDAH_ISOLATION": "chroot"},
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ImageBuildError(
                f"{what}: buildah did not finish within {timeout:.0f} s. Check the machine's load and disk "
                f"({self.root}), then retry."
            ) from None
        if result.returncode != 0:
            raise ImageBuildError(
                f"{what}: buildah exited {result.returncode}. Its output ends with:\n"
                f"{_tail(result.stderr or result.stdout)}"
            )
        return result.stdout

    def image_exists(self, reference: str) -> bool:
        result = subprocess.run(
            self.argv("inspect", "--type", "image", reference), capture_output=True, text=True, check=False
        )
        return result.returncode == 0

    def inspect(self, reference: str) -> dict:
        return json.loads(self.run("inspect", "--type", "image", reference, what=f"Inspecting image {reference}"))

    def labels(self, reference: str) -> dict[str, str]:
        return self.inspect(reference).get("OCIv1", {}).get("config", {}).get("Labels") or {}

    def require_image(self, reference: str, hint: str) -> None:
        if not self.image_exists(reference):
            raise ImageBuildError(
                f"Checked buildah storage {self.root} for the base image {reference}: not there. {hint}"
            )

    def build(
        self,
        context_dir: Path,
        tag: str,
        *,
        build_args: dict[str, str],
        labels: dict[str, str],
        timeout: float = config.IMAGE_BUILD_TIMEOUT_S,
    ) -> str:
        """Build ``context_dir/Dockerfile`` as ``tag``; return the image id.

        ``--layers`` keeps every step as a cached layer: the steps before the model (packages, app) are reused by
        the next model version, so its image shares those layers byte for byte and a push sends only the model.
        """
        args = ["bud", "--isolation", "chroot", "--layers", "--pull-never", "--quiet", "--tag", tag]
        for name, value in build_args.items():
            args += ["--build-arg", f"{name}={value}"]
        for name, value in labels.items():
            args += ["--label", f"{name}={value}"]
        args += ["--file", str(Path(context_dir) / "Dockerfile"), str(context_dir)]
        self.run(*args, what=f"Building image {tag} from {context_dir}", timeout=timeout)
        return self.inspect(tag)["FromImageID"]

    def remove_other_tags(self, reference: str) -> list[str]:
        """Drop every other tag of ``reference``'s repository from the storage; return the names removed.

        vfs keeps a full copy of the file system per image, so only the newest image of a repository is kept. It
        is kept (not removed too) because removing an image also removes its untagged parents: the build cache of
        the steps the next model version shares with it.
        """
        repository = reference.rsplit(":", 1)[0]
        listed = json.loads(self.run("images", "--json", what="Listing images") or "[]")
        others = [
            name for image in listed for name in (image.get("names") or [])
            if name.rsplit(":", 1)[0] == repository and name != reference
        ]  # fmt: skip
        for name in others:
            subprocess.run(self.argv("rmi", name), capture_output=True, check=False)
        return others

    @contextmanager
    def serve(self, image: str, command: list[str], log_path: Path) -> Iterator[subprocess.Popen]:
        """Run ``command`` inside a working container of ``image`` until the block ends; yields the process.

        The process gets a session of its own, and the whole session is ended on exit: ``buildah run`` does not pass
        a SIGTERM on to the program it started.
        """
        container = self.run("from", "--pull-never", "--quiet", image, what=f"Creating a container of {image}").strip()
        try:
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    self.argv("run", "--isolation", "chroot", container, "--", *command),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            try:
                yield proc
            finally:
                _end_session(proc)
        finally:
            subprocess.run(self.argv("rm", container), capture_output=True, check=False)

    def push(self, image: str, destination: str, authfile: Path, tls_verify: bool, timeout: float = 1800.0) -> str:
        """Push ``image`` to ``destination`` (``host/repo:tag``); return the pushed manifest's digest.

        The registry only creates the tag when the manifest is uploaded, and it accepts a manifest only once every
        layer it names is there: an interrupted push leaves no tag behind.

        :raises ImageRegistryAuthError: credentials refused.
        :raises ImageRegistryUnavailableError: registry unreachable or failing.
        :raises ImageRegistryError: anything else the registry refused.
        """
        with tempfile.TemporaryDirectory(prefix="edge-push-") as scratch:
            digest_file = Path(scratch) / "digest"
            args = [
                "push", "--authfile", str(authfile), f"--tls-verify={'true' if tls_verify else 'false'}",
                "--digestfile", str(digest_file), "--quiet", image, f"docker://{destination}",
            ]  # fmt: skip
            try:
                result = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                raise ImageRegistryUnavailableError(
                    f"Pushing {destination}: no answer within {timeout:.0f} s. The registry is slow or unreachable; "
                    "the task is retried (blobs already uploaded are not sent again)."
                ) from None
            if result.returncode != 0:
                raise _push_error(destination, result.stderr or result.stdout)
            return digest_file.read_text().strip()


def _end_session(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue


def _push_error(destination: str, output: str) -> ImageRegistryError:
    text = output.lower()
    if any(hint in text for hint in _AUTH_HINTS):
        return ImageRegistryAuthError(
            f"Pushing {destination}: the registry refused the credentials of the image_registry connection. "
            f"Fix its login and password (for ACR: the service principal's app id and secret). buildah said:\n"
            f"{_tail(output)}"
        )
    if any(hint in text for hint in _UNREACHABLE_HINTS):
        return ImageRegistryUnavailableError(
            f"Pushing {destination}: the registry could not be reached or failed; the task is retried. "
            f"buildah said:\n{_tail(output)}"
        )
    return ImageRegistryError(f"Pushing {destination} failed; the task is retried. buildah said:\n{_tail(output)}")


# ----------------------------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistrySettings:
    host: str
    login: str
    password: str
    tls_verify: bool

    def __repr__(self) -> str:  # the password stays out of logs and tracebacks
        return f"RegistrySettings(host={self.host!r}, login={self.login!r}, tls_verify={self.tls_verify})"


class ImageRegistryHook(BaseHook):
    """An OCI registry (ACR or any registry speaking the distribution API v2) through the ``image_registry``
    connection.

    :param image_registry_conn_id: connection with host (login server, ``host[:port]``), login, password and the
        optional extra ``tls_verify`` (false only for a plain-HTTP or self-signed registry, e.g. on loopback).
    """

    conn_name_attr = "image_registry_conn_id"
    default_conn_name = config.REGISTRY_CONN_ID
    conn_type = "generic"
    hook_name = "OCI image registry"

    def __init__(self, image_registry_conn_id: str = default_conn_name, timeout: float = 30.0) -> None:
        super().__init__()
        self.image_registry_conn_id = image_registry_conn_id
        self.timeout = timeout
        self._token: str | None = None

    @cached_property
    def settings(self) -> RegistrySettings:
        conn = self.get_connection(self.image_registry_conn_id)
        extra = conn.extra_dejson
        tls_verify = extra.get("tls_verify", True)
        if isinstance(tls_verify, str):
            tls_verify = tls_verify.strip().lower() not in ("false", "0", "no", "off")
        return RegistrySettings(registry_host(conn.host or ""), conn.login or "", conn.password or "", bool(tls_verify))

    @property
    def host(self) -> str:
        return self.settings.host

    # -- HTTP API v2 ---------------------------------------------------------------------------------------------

    @cached_property
    def _base_url(self) -> str:
        """``https://host`` - or ``http://host`` when TLS is not verified and the registry turns out to speak plain
        HTTP (like buildah's ``--tls-verify=false``)."""
        host = self.settings.host
        if self.settings.tls_verify:
            return f"https://{host}"
        try:
            self._open(urllib.request.Request(f"https://{host}/v2/", method="GET"), auth=None)
        except ssl.SSLError:
            return f"http://{host}"
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLError):
                return f"http://{host}"
            if isinstance(exc.reason, (ConnectionRefusedError, socket.timeout, OSError)):
                raise self._unreachable(f"https://{host}/v2/", exc.reason) from None
        return f"https://{host}"

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.settings.tls_verify:
            return None
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    def _open(self, request: urllib.request.Request, auth: str | None):
        if auth:
            request.add_header("Authorization", auth)
        return urllib.request.urlopen(request, timeout=self.timeout, context=self._ssl_context())  # noqa: S310

    def _basic(self) -> str | None:
        if not self.settings.login:
            return None
        raw = f"{self.settings.login}:{self.settings.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _unreachable(self, url: str, reason: object) -> ImageRegistryUnavailableError:
        return ImageRegistryUnavailableError(
            f"Checked the image registry at {url}: {reason}. It is down or unreachable from this worker; the task "
            f"is retried. Check that the registry in connection {self.image_registry_conn_id!r} runs and is reachable."
        )

    def _bearer_token(self, challenge: str, scope: str) -> str:
        """Token for a ``Bearer realm=...,service=...`` challenge (ACR, Docker token auth), got with basic auth."""
        params = dict(part.split("=", 1) for part in challenge[len("Bearer "):].replace('"', "").split(",") if "=" in part)
        query = {"service": params.get("service", self.settings.host), "scope": scope}
        url = f"{params['realm']}?{urllib.parse.urlencode(query)}"
        try:
            with self._open(urllib.request.Request(url), auth=self._basic()) as response:
                document = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise self._refused(exc.code) from None
            raise ImageRegistryError(f"Getting a registry token from {params['realm']}: HTTP {exc.code}.") from None
        return "Bearer " + (document.get("token") or document.get("access_token") or "")

    def _refused(self, status: int) -> ImageRegistryAuthError:
        return ImageRegistryAuthError(
            f"Checked the credentials of connection {self.image_registry_conn_id!r} against registry "
            f"{self.settings.host}: refused (HTTP {status}) for login {self.settings.login!r}. Fix the login and "
            "password in the connection (for ACR: a service principal's app id and secret with AcrPush). "
            "Not retried: the same credentials are refused every time."
        )

    def _request(self, method: str, path: str, scope: str, accept: tuple[str, ...] = ()) -> tuple[int, dict, bytes]:
        """One registry API call with authentication; returns ``(status, headers, body)`` (404 included)."""
        url = f"{self._base_url}{path}"
        headers = {"Accept": ", ".join(accept)} if accept else {}
        auth = self._token or self._basic()
        for attempt in range(2):
            try:
                with self._open(urllib.request.Request(url, method=method, headers=headers), auth=auth) as response:
                    return response.status, dict(response.headers), response.read()
            except urllib.error.HTTPError as exc:
                challenge = exc.headers.get("WWW-Authenticate", "")
                if exc.code == 401 and attempt == 0 and challenge.startswith("Bearer "):
                    auth = self._token = self._bearer_token(challenge, scope)
                    continue
                if exc.code in (401, 403):
                    raise self._refused(exc.code) from None
                if exc.code == 404:
                    return 404, dict(exc.headers), b""
                if exc.code >= 500:
                    raise self._unreachable(url, f"HTTP {exc.code}") from None
                raise ImageRegistryError(
                    f"Registry request {method} {url} answered HTTP {exc.code}: {_tail(exc.read().decode(errors='replace'), 300)}"
                ) from None
            except urllib.error.URLError as exc:
                raise self._unreachable(url, exc.reason) from None
            except (TimeoutError, ConnectionError) as exc:
                raise self._unreachable(url, exc) from None
        raise self._refused(401)

    def check_credentials(self) -> None:
        """Fail early, before any build: the registry answers and accepts the connection's credentials.

        :raises ImageRegistryAuthError: refused.
        :raises ImageRegistryUnavailableError: unreachable.
        """
        self._request("GET", "/v2/", scope="registry:catalog:*")

    def manifest(self, repository: str, reference: str) -> tuple[str, dict] | None:
        """``(digest, manifest)`` of ``repository:reference`` (tag or digest), or None if there is none."""
        status, headers, body = self._request(
            "GET", f"/v2/{repository}/manifests/{reference}", scope=f"repository:{repository}:pull", accept=MANIFEST_TYPES
        )
        if status == 404:
            return None
        headers = {k.lower(): v for k, v in headers.items()}
        return headers.get("docker-content-digest", ""), json.loads(body)

    def image_config(self, repository: str, manifest: dict) -> dict:
        """The image configuration blob a manifest points at (labels are under ``config.Labels``)."""
        digest = manifest["config"]["digest"]
        status, _, body = self._request("GET", f"/v2/{repository}/blobs/{digest}", scope=f"repository:{repository}:pull")
        if status == 404:
            raise ImageRegistryError(
                f"Registry {self.settings.host} lists {repository} with config {digest}, but the blob is missing. "
                "Push the image again."
            )
        return json.loads(body)

    @contextmanager
    def authfile(self) -> Iterator[Path]:
        """A containers-auth.json with the connection's credentials, readable by the owner only, deleted after use."""
        with tempfile.TemporaryDirectory(prefix="edge-registry-auth-") as folder:
            path = Path(folder) / "auth.json"
            auths = {}
            if self.settings.login:
                raw = f"{self.settings.login}:{self.settings.password}".encode()
                auths[self.settings.host] = {"auth": base64.b64encode(raw).decode()}
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"auths": auths}, fh)
            yield path


# ----------------------------------------------------------------------------------------------------------------
# Wheels for the image
# ----------------------------------------------------------------------------------------------------------------


def download_wheels(
    requirements: Path,
    cache_root: Path = config.IMAGE_WHEELS_DIR,
    python_version: str = config.IMAGE_PYTHON_VERSION,
    glibc: str = config.IMAGE_GLIBC,
    pip_args: str = config.IMAGE_PIP_ARGS,
    arch: str | None = None,
) -> Path:
    """The folder holding every wheel ``requirements`` needs for the image's Python, plus pip; downloaded once.

    The folder's name changes with the requirements, the Python and the platform, so a change downloads anew
    instead of mixing wheel sets. Only binary wheels (``--only-binary=:all:``): the image has no compiler.

    :raises ImageBuildError: pip could not download them (the message has pip's last lines).
    """
    import platform as host_platform
    import shlex

    platforms = wheel_platforms(glibc, arch or host_platform.machine())
    folder = Path(cache_root) / wheels_cache_name(python_version, platforms, Path(requirements).read_bytes())
    if (folder / ".complete").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=folder.name + ".partial-", dir=folder.parent))
    argv = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
        "--python-version", python_version, "--implementation", "cp", "--dest", str(partial),
        *(arg for p in platforms for arg in ("--platform", p)), *shlex.split(pip_args),
        "-r", str(requirements), "pip",
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise ImageBuildError(
            f"Downloading the scoring image's wheels ({requirements}) for Python {python_version} on {platforms[0]}: "
            f"pip exited {result.returncode}:\n{_tail(result.stderr)}\nCheck the package index (EDGE_IMAGE_PIP_ARGS "
            "takes --index-url for a mirror) and that EDGE_IMAGE_PYTHON_VERSION / EDGE_IMAGE_GLIBC match the base image."
        )
    (partial / ".complete").write_text(f"{time.monotonic() - started:.1f} s\n")
    try:
        partial.rename(folder)
    except OSError:
        # Another build finished the same set first: use it.
        shutil.rmtree(partial, ignore_errors=True)
    return folder
