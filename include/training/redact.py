"""URLs and secrets made safe to log: a URL without its query and credentials, text without keys or signatures.

Shared by both sides of the trust boundary: ``train.py`` (on the edge VM or in Azure ML) formats every log line
through it, and the Airflow side loads it from ``include/training/`` (``edge_training.redact``). Standard library only:
it ships to the VM with the training code. A SAS token travels in a URL's query (``?sv=...&sig=...``) and in
connection strings (``SharedAccessSignature=...``); an account key in ``AccountKey=...``.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# A path with a query, as HTTP libraries quote a request ("Max retries exceeded with url: /c?comp=list&sig=...").
_QUERY_IN_TEXT = re.compile(r"(/[^\s'\"<>?]*)\?[^\s'\"<>]*")
_SECRET_SETTING = re.compile(r"(?i)\b(AccountKey|SharedAccessSignature)=[^;\s'\"]+")
_SIGNATURE = re.compile(r"(?i)\bsig=[^&;\s'\"]+")


def redact_url(url: str) -> str:
    """``url`` without its query, fragment and user:password (a SAS token in the query is a credential).

    :param url: any URL, e.g. a ``BlobServiceClient.url`` carrying ``?sv=...&sig=...``.
    """
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return "<URL not shown>"
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def redact_text(text: str) -> str:
    """``text`` with every URL's query and every account key / SAS value removed (e.g. a traceback tail)."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), str(text))
    text = _QUERY_IN_TEXT.sub(r"\1", text)
    text = _SECRET_SETTING.sub(lambda m: f"{m.group(1)}=<redacted>", text)
    return _SIGNATURE.sub("<signature redacted>", text)


