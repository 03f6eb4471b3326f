"""P7: the scoring image's server against `mlflow models serve` of the same registered model version, side by side.

Registers one model version (a real RandomForest of 200 trees, depth 8, like the training job's defaults) in a private
MLflow registry, builds the scoring image for it with buildah (private vfs storage, wheels from the local cache, no
registry push), starts the image's server with `buildah run` (as the pipeline's smoke test does) and
`mlflow models serve -m models:/<name>/<version> --env-manager local`, each with one worker, and loads both from
Debian's `wrk` on loopback (2 threads, 16 connections) with the same 1-row and 100-row `dataframe_split` requests
(synthetic rows). Both must give the same predictions, and every response must be a 200.

Targets, for 1-row and 100-row requests alike: the image serves at least 2x the requests per second of
`mlflow models serve`, at a p99 latency no worse than its. `P7_DURATION_S` (default 10) sets each measurement's
length; each is preceded by a 2 s warm-up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _target import Figure, report

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

MODEL = "p7-scoring"
THREADS, CONNECTIONS = 2, 16
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("P7_BODY"), "r")
wrk.body = f:read("*a")
f:close()
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, body: Path, seconds: float, script: Path) -> dict:
    """Run wrk against ``url`` with ``body``; returns ``{"rps", "p50_ms", "p99_ms", "requests", "errors"}``."""
    argv = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", "-s", str(script), url]
    out = subprocess.run(argv, env={**os.environ, "P7_BODY": str(body)}, capture_output=True, text=True,
                         timeout=seconds + 60, check=True).stdout  # fmt: skip

    def latency(percent: str) -> float:
        value, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * _UNITS[unit]

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "errors": (int(non_2xx.group(1)) if non_2xx else 0)
        + (sum(int(n) for n in socket_errors.groups()) if socket_errors else 0),
    }


def post(url: str, body: bytes) -> dict:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url}: not ready within {timeout:.0f} s:\n{log.read_text()[-2000:]}")


def main() -> int:
    if shutil.which("wrk") is None:
        raise SystemExit("P7 needs Debian's wrk: scripts/install_system_deps.sh installs it (apt-get install wrk).")
    duration = float(os.getenv("P7_DURATION_S", "10"))
    with tempfile.TemporaryDirectory(prefix="p7-") as scratch:
        scratch = Path(scratch)
        os.environ.update({
            "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}",
            "EDGE_MLFLOW_ARTIFACTS_DIR": str(scratch / "mlartifacts"),
            "EDGE_BUILDAH_ROOT": str(scratch / "buildah" / "root"),
            "EDGE_BUILDAH_RUNROOT": str(scratch / "buildah" / "run"),
        })  # fmt: skip
        from edge_training import config
        from edge_training.hooks.image import Buildah, download_wheels, free_port
        from edge_training.image_context import assemble_context, smoke_rows
        from edge_training.operators.image import SERVER_PATH
        from edge_training.registry import get_model_registry
        from tests._models import FEATURES, write_model

        registry = get_model_registry("mlflow")
        version = registry.register(MODEL, write_model(scratch / "model", seed=7, trees=200), "p7-run", {})
        onnx_path = registry.download_onnx(version, scratch / "download")

        subprocess.run([str(ROOT / "scripts" / "build_base_image.sh")], check=True, stdout=subprocess.DEVNULL)
        buildah = Buildah(os.environ["EDGE_BUILDAH_ROOT"], os.environ["EDGE_BUILDAH_RUNROOT"])
        wheels = download_wheels(config.IMAGE_SERVING_DIR / "requirements.txt", config.IMAGE_WHEELS_DIR)
        context = assemble_context(scratch / "context", config.IMAGE_SERVING_DIR, wheels, onnx_path, config.IMAGE_BASE)
        image = f"localhost/{MODEL}:{version.version}"
        started = time.monotonic()
        buildah.build(context.path, image, build_args={"BASE_IMAGE": config.IMAGE_BASE, "MODEL_NAME": MODEL,
                                                       "MODEL_VERSION": version.version}, labels={})  # fmt: skip
        print(f"P7 image built in {time.monotonic() - started:.0f} s: {image}", flush=True)

        rows = smoke_rows(FEATURES, count=100, seed=7)
        bodies = {}
        for count in (1, 100):
            bodies[count] = scratch / f"{count}-rows.json"
            data = [[row[f] for f in FEATURES] for row in rows[:count]]
            bodies[count].write_text(json.dumps({"dataframe_split": {"columns": FEATURES, "data": data}}))
        script = scratch / "post.lua"
        script.write_text(WRK_SCRIPT)

        image_port, mlflow_port = free_port(), free_port()
        mlflow_log = scratch / "mlflow.log"
        command = ["python3", SERVER_PATH, "--host", "127.0.0.1", "--port", str(image_port)]
        mlflow_argv = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
                       f"models:/{MODEL}/{version.version}", "--env-manager", "local", "--workers", "1",
                       "-h", "127.0.0.1", "-p", str(mlflow_port)]  # fmt: skip
        with buildah.serve(image, command, scratch / "image.log") as image_proc, open(mlflow_log, "wb") as log:
            peer = subprocess.Popen(mlflow_argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})  # fmt: skip
            try:
                servers = {"image": f"http://127.0.0.1:{image_port}", "mlflow": f"http://127.0.0.1:{mlflow_port}"}
                wait_ready(f"{servers['image']}/v2/health/ready", image_proc, scratch / "image.log")
                wait_ready(f"{servers['mlflow']}/ping", peer, mlflow_log)
                answers = {name: post(f"{url}/invocations", bodies[100].read_bytes())["predictions"]
                           for name, url in servers.items()}  # fmt: skip
                same_labels = answers["image"]["label"] == answers["mlflow"]["label"]
                gap = max(abs(a - b) for pa, pb in zip(answers["image"]["probabilities"],
                                                       answers["mlflow"]["probabilities"]) for a, b in zip(pa, pb))  # fmt: skip
                print(f"P7 same predictions on 100 rows: labels {same_labels}, max |probability diff| {gap:.2e}")
                results = {}
                for count, body in bodies.items():
                    for name, url in servers.items():
                        wrk(f"{url}/invocations", body, 2, script)
                        results[count, name] = result = wrk(f"{url}/invocations", body, duration, script)
                        print(f"P7 {count}-row {name}: {result['rps']:.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
                              f"p99 {result['p99_ms']:.2f} ms ({result['requests']} requests, "
                              f"{result['errors']} errors)", flush=True)  # fmt: skip
            finally:
                os.killpg(peer.pid, 15)
                peer.wait(timeout=30)

    figures = [Figure("P7 same_predictions", float(same_labels and gap <= 1e-5), 1.0, "==", ".0f")]
    for count in (1, 100):
        ours, theirs = results[count, "image"], results[count, "mlflow"]
        figures += [
            Figure(f"P7 {count}-row errors", float(ours["errors"] + theirs["errors"]), 0.0, "==", ".0f"),
            Figure(f"P7 {count}-row throughput_ratio (image / mlflow)", ours["rps"] / theirs["rps"], 2.0, ">=", ".2f"),
            Figure(f"P7 {count}-row p99_ratio (image / mlflow)", ours["p99_ms"] / theirs["p99_ms"], 1.0, "<=", ".2f"),
        ]
    return report(*figures)


if __name__ == "__main__":
    sys.exit(main())
