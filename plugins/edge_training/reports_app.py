"""The reports app: serves Data Docs, model cards, model-version and image pages from the Airflow api-server.

Mounted by the ``edge_training_reports`` plugin at :data:`edge_training.reports.URL_PREFIX`. Every request is
authenticated the way Airflow's own UI and REST API are (``airflow.api_fastapi.core_api.security.get_user``: the
UI's ``_token`` cookie, or an ``Authorization: Bearer`` token) and authorised by the configured auth manager as
read access to the training DAG's runs. A browser without a session is sent to Airflow's login page and back.

Files come only from under ``EDGE_REPORTS_DIR`` (no path may climb out of it); the model-version and image pages
read the model registry (tags only: no data row is in them).
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from edge_training import reports

# The DAG whose read permission covers its reports (Data Docs and the model versions it registers).
TRAINING_DAG_ID = "edge_training"
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
# Reports are static: no script runs and nothing loads from elsewhere (Data Docs bring their own inline assets).
_CARD_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


class _LoginRequired(Exception):
    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


async def authorised_user(request: Request):
    """The signed-in Airflow user allowed to read the training DAG's runs; sends a browser without a session to
    the login page, answers 403 to a user without the permission."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    credentials = await bearer_scheme(request)
    try:
        user = await get_user(request, None, credentials)
    except HTTPException as exc:
        if exc.status_code == 401 and "text/html" in request.headers.get("accept", ""):
            raise _LoginRequired(str(request.url)) from None
        raise
    allowed = get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=TRAINING_DAG_ID), user=user
    )
    if not allowed:
        raise HTTPException(403, f"User {user.get_name()!r} may not read the runs of DAG {TRAINING_DAG_ID}.")
    return user


def _file(root: Path, relative: str, what: str) -> FileResponse:
    found = reports.resolve_under(root, relative)
    if found is None:
        raise HTTPException(
            404, f"No {what} at {relative!r} under the reports folder (EDGE_REPORTS_DIR on the api-server). It is "
                 "written by the task that produced it; in the edge-worker topology it stays on the worker's disk.",
        )
    headers = dict(_NO_STORE)
    if found.suffix == ".html":
        headers["Content-Security-Policy"] = _CARD_CSP if what == "model card" else "script-src 'none'"
    return FileResponse(found, headers=headers)


def _page(title: str, rows: list[tuple[str, str]], links: list[tuple[str, str]]) -> HTMLResponse:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td><code>{html.escape(v)}</code></td></tr>" for k, v in rows)
    nav = " · ".join(f'<a href="{html.escape(u, quote=True)}">{html.escape(t)}</a>' for t, u in links)
    text = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title><style>"
            "body{font:14px system-ui,sans-serif;margin:24px}td,th{border:1px solid #ccd;padding:3px 8px;"
            "text-align:left;vertical-align:top}table{border-collapse:collapse}code{word-break:break-all}</style>"
            f"</head><body><h1>{html.escape(title)}</h1><p>{nav}</p><table>{body}</table></body></html>")
    return HTMLResponse(text, headers={**_NO_STORE, "Content-Security-Policy": _CARD_CSP})


def _version(model_name: str, version: str):
    from edge_training.registry import get_model_registry

    registry = get_model_registry()
    found = registry.get_version(model_name, version)
    if found is None:
        raise HTTPException(404, f"Model {model_name!r} has no version {version!r} in the model registry "
                                 f"({type(registry).__name__}).")
    champion = registry.get_champion(model_name)
    return found, champion is not None and str(champion.version) == str(found.version)


def create_app() -> FastAPI:
    app = FastAPI(title="Edge training reports", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(_LoginRequired)
    async def _to_login(request: Request, exc: _LoginRequired) -> Response:
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=exc.next_url), status_code=303)

    @app.get("/data-docs/{dag_id}/{run_id}/{path:path}", dependencies=[Depends(authorised_user)])
    def data_docs(dag_id: str, run_id: str, path: str) -> FileResponse:
        folder = reports.docs_dir_for_run(reports.reports_root(), dag_id, run_id)
        return _file(folder, path or reports.DATA_DOCS_INDEX, "Data Docs file")

    @app.get("/model-cards/{model_name}/{version}/{name}", dependencies=[Depends(authorised_user)])
    def model_card(model_name: str, version: str, name: str) -> FileResponse:
        if name not in ("model_card.html", "model_card.json"):
            raise HTTPException(404, f"A model card is model_card.html or model_card.json, not {name!r}.")
        return _file(reports.model_card_dir(reports.reports_root(), model_name, version), name, "model card")

    @app.get("/model-versions/{model_name}/{version}", dependencies=[Depends(authorised_user)])
    def model_version(model_name: str, version: str) -> HTMLResponse:
        found, is_champion = _version(model_name, version)
        rows = [("version", found.version), ("uri", found.uri), ("source", found.source),
                ("aliases", "champion" if is_champion else "none")]
        rows += sorted(found.tags.items())
        links = [("Model card", reports.model_card_url(model_name, version))]
        if found.tags.get("image.reference"):
            links.append(("Image", reports.image_url(model_name, version)))
        return _page(f"Model {model_name} version {found.version}", rows, links)

    @app.get("/images/{model_name}/{version}", dependencies=[Depends(authorised_user)])
    def image(model_name: str, version: str) -> HTMLResponse:
        found, _ = _version(model_name, version)
        reference = found.tags.get("image.reference")
        if not reference:
            raise HTTPException(404, f"Model {model_name!r} version {version!r} has no scoring image yet (no "
                                     "image.reference tag): build_image has not succeeded for it.")
        rows = [("reference", reference), ("digest", found.tags.get("image.digest", "n/a")),
                ("pull", f"buildah pull {reference}")]
        links = [("Model version", reports.model_version_url(model_name, version)),
                 ("Model card", reports.model_card_url(model_name, version))]
        return _page(f"Scoring image of {model_name} version {version}", rows, links)

    return app
