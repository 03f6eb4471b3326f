"""The stack's image registry read over its HTTP API v2, independently of the project's hook."""

from __future__ import annotations

import urllib.error
import urllib.request

MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


def registry_get(stack, path: str, accept: str = "") -> tuple[int, dict, bytes]:
    """``(status, headers, body)`` of a GET on the registry of ``stack`` (a ``StackInfo``), 4xx/5xx answers included.

    :param path: e.g. ``/v2/<repository>/tags/list``.
    :param accept: the Accept header (e.g. :data:`MANIFEST_ACCEPT` for a manifest).
    """
    from scripts.edge_stack import registry_basic_auth

    headers = registry_basic_auth(stack.registry_user, stack.registry_password)
    if accept:
        headers["Accept"] = accept
    request = urllib.request.Request(f"http://{stack.registry_host}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback registry
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), b""
