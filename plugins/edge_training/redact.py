"""URLs and secrets made safe to log on the Airflow side, by the same rule ``train.py`` applies on the edge VM.

The rule lives in ``include/training/redact.py``, which ships to the VM with the training code; loading it from
there keeps one rule for both sides.
"""

from __future__ import annotations

import importlib.util

from edge_training import config

_spec = importlib.util.spec_from_file_location("edge_redact", config.INCLUDE_DIR / "training" / "redact.py")
assert _spec is not None and _spec.loader is not None
_redact = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_redact)

redact_url = _redact.redact_url
redact_text = _redact.redact_text
