"""Edge VM health check: the script that runs on the VM, and the rules that judge its report.

Pure logic (no Airflow import): ``EdgeVMHealthCheckOperator`` ships ``build_health_script`` over SSH, feeds the
printed JSON to ``parse_health_report`` and judges it with ``evaluate_health``.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_training import config

REPORT_KEYS = (
    "hostname",
    "cpus",
    "load1",
    "work_dir",
    "work_dir_writable",
    "free_disk_gb",
    "available_memory_gb",
    "python_version",
    "docker",
    "gpu",
    "epoch",
    "blob_endpoint",
    "blob_endpoint_reachable",
)


def _parse_version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.strip().split("."))
    except ValueError:
        raise ValueError(
            f"Python version {text!r} is not dotted numbers like '3.9' (checked EDGE_VM_MIN_PYTHON and the version "
            "the edge VM reported); fix the setting."
        ) from None


@dataclass(frozen=True)
class HealthThresholds:
    """What the edge VM must offer before a training job is sent to it (defaults: ``EDGE_VM_*`` settings)."""

    min_free_disk_gb: float = config.VM_MIN_FREE_DISK_GB
    min_free_memory_gb: float = config.VM_MIN_FREE_MEMORY_GB
    max_load_per_cpu: float = config.VM_MAX_LOAD_PER_CPU
    min_python: tuple[int, ...] = _parse_version(config.VM_MIN_PYTHON)
    max_clock_skew_s: float = config.VM_MAX_CLOCK_SKEW_S
    require_gpu: bool = config.VM_REQUIRE_GPU
    require_docker: bool = config.VM_REQUIRE_DOCKER


@dataclass(frozen=True)
class HealthCheck:
    """One judged check: ``status`` is "ok", "warning" or "failed"; ``message`` is the log/error line."""

    name: str
    status: str
    message: str


@dataclass
class HealthVerdict:
    """Outcome of ``evaluate_health``: ``ok`` is False when any check failed; warnings never fail."""

    ok: bool
    failures: list[str]
    warnings: list[str]
    checks: list[HealthCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form for XCom."""
        return asdict(self)


# Runs under `sh -s` on the VM. The shell part reports a missing python3 as JSON instead of failing obscurely;
# the Python part avoids f-strings and other newer syntax so that an old interpreter still reports its version.
_SCRIPT = r"""
if ! command -v python3 >/dev/null 2>&1; then
  printf '{"python_missing": true, "hostname": "%s", "path": "%s"}\n' "$(hostname)" "$PATH"
  exit 0
fi
exec python3 - "$@" <<'EDGE_VM_HEALTH_PY'
import json, os, shutil, socket, subprocess, sys, tempfile, time
try:
    from urllib.request import Request, urlopen
    from urllib.error import HTTPError
except ImportError:
    raise SystemExit("python3 without urllib")

GB = 1000.0 ** 3
work_dir = os.path.expanduser(sys.argv[1])
endpoint = sys.argv[2]
report = {"hostname": socket.gethostname(), "cpus": os.cpu_count() or 1, "work_dir": work_dir,
          "python_version": ".".join(str(v) for v in sys.version_info[:3]), "python_executable": sys.executable}
report["load1"] = round(os.getloadavg()[0], 2)

try:
    os.makedirs(work_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=work_dir, prefix=".health-"):
        pass
    report["work_dir_writable"], report["work_dir_error"] = True, None
except OSError as err:
    report["work_dir_writable"], report["work_dir_error"] = False, "%s: %s" % (type(err).__name__, err)
probe = work_dir
while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
    probe = os.path.dirname(probe)
report["free_disk_gb"] = round(shutil.disk_usage(probe).free / GB, 2)

available = None
try:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
except OSError:
    pass
if available is None:
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
report["available_memory_gb"] = round(available / GB, 2)

report["docker"] = shutil.which("docker") is not None
gpus = 0
if shutil.which("nvidia-smi"):
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 timeout=20, check=False)
        if listing.returncode == 0:
            gpus = sum(1 for line in listing.stdout.decode("utf-8", "replace").splitlines() if line.startswith("GPU"))
    except (OSError, subprocess.SubprocessError):
        gpus = 0
report["gpu"], report["gpu_count"] = gpus > 0, gpus

# Any HTTP answer (even 400/403) proves the VM can talk to the storage endpoint; only a transport error does not.
report["blob_endpoint"] = endpoint
started = time.time()
try:
    urlopen(Request(endpoint, method="GET"), timeout=15).close()
    report["blob_endpoint_reachable"], report["blob_endpoint_status"] = True, 200
    report["blob_endpoint_error"] = None
except HTTPError as err:
    report["blob_endpoint_reachable"], report["blob_endpoint_status"] = True, err.code
    report["blob_endpoint_error"] = None
except Exception as err:
    reason = getattr(err, "reason", err)
    report["blob_endpoint_reachable"], report["blob_endpoint_status"] = False, None
    report["blob_endpoint_error"] = "%s: %s" % (type(reason).__name__, reason)
report["blob_endpoint_seconds"] = round(time.time() - started, 3)

report["epoch"] = time.time()
print(json.dumps(report, sort_keys=True))
EDGE_VM_HEALTH_PY
"""


def build_health_script(blob_endpoint: str, work_dir: str) -> str:
    """
    Return the POSIX sh script (with an embedded python3 part) that prints one JSON health report.

    Run it on the VM with ``sh -s`` and the script on stdin.

    :param blob_endpoint: blob service URL the VM must reach, e.g. ``https://acct.blob.local.azurestack.external``.
    :param work_dir: directory the training job uses on the VM (``~`` allowed); its free space is measured.
    """
    return f"set -- {shlex.quote(work_dir)} {shlex.quote(blob_endpoint)}\n{_SCRIPT}"


def parse_health_report(stdout: str) -> dict[str, Any]:
    """
    Parse the JSON object the health script printed (the last JSON line wins, so login banners are harmless).

    :raises ValueError: output holds no JSON object, or the object lacks report fields.
    """
    candidates = [line.strip() for line in stdout.splitlines() if line.strip().startswith("{")]
    for line in reversed(candidates):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict):
            break
    else:
        snippet = stdout.strip()[:200] or "(no output)"
        raise ValueError(
            "The edge VM health check printed no JSON report; it got: "
            f"{snippet!r}. Run `sh -s` by hand over SSH on the VM to see what the login shell prints, and check "
            "that `python3` works there."
        )
    if report.get("python_missing"):
        return report
    missing = [key for key in REPORT_KEYS if key not in report]
    if missing:
        raise ValueError(
            f"The edge VM health report lacks {', '.join(missing)} (got fields: {', '.join(sorted(report))}). "
            "The script on the VM did not run to the end; run it by hand to see its error."
        )
    return report


def _ok(name: str, message: str) -> HealthCheck:
    return HealthCheck(name, "ok", message)


def _failed(name: str, message: str) -> HealthCheck:
    return HealthCheck(name, "failed", message)


def _check_python(report: dict[str, Any], limits: HealthThresholds) -> HealthCheck:
    wanted = ".".join(str(v) for v in limits.min_python)
    found = report["python_version"]
    if _parse_version(found) < tuple(limits.min_python):
        return _failed(
            "python",
            f"python: {report.get('python_executable', 'python3')} on the edge VM is Python {found}, the training "
            f"code needs >= {wanted}; install a newer python3 on the VM (or put it first on the SSH user's PATH).",
        )
    return _ok("python", f"python: {found} (needs >= {wanted})")


def _check_disk(report: dict[str, Any], limits: HealthThresholds) -> HealthCheck:
    found = float(report["free_disk_gb"])
    if found < limits.min_free_disk_gb:
        return _failed(
            "disk",
            f"disk: {found:.2f} GB free at {report['work_dir']} on the edge VM, below the minimum "
            f"{limits.min_free_disk_gb:g} GB (EDGE_VM_MIN_FREE_DISK_GB); free space there (old runs under the work "
            "directory can go) or grow the disk.",
        )
    return _ok("disk", f"disk: {found:.2f} GB free at {report['work_dir']} (min {limits.min_free_disk_gb:g} GB)")


def _check_work_dir(report: dict[str, Any]) -> HealthCheck:
    if not report["work_dir_writable"]:
        return _failed(
            "work_dir",
            f"work_dir: cannot write to {report['work_dir']} on the edge VM ({report.get('work_dir_error')}); "
            "create it and give the SSH user write access, or point EDGE_VM_WORK_DIR elsewhere.",
        )
    return _ok("work_dir", f"work_dir: {report['work_dir']} is writable")


def _check_memory(report: dict[str, Any], limits: HealthThresholds) -> HealthCheck:
    found = float(report["available_memory_gb"])
    if found < limits.min_free_memory_gb:
        return _failed(
            "memory",
            f"memory: {found:.2f} GB available on the edge VM, below the minimum {limits.min_free_memory_gb:g} GB "
            "(EDGE_VM_MIN_FREE_MEMORY_GB); stop other workloads on the VM or give it more memory.",
        )
    return _ok("memory", f"memory: {found:.2f} GB available (min {limits.min_free_memory_gb:g} GB)")


def _check_load(report: dict[str, Any], limits: HealthThresholds) -> HealthCheck:
    cpus = max(int(report["cpus"]), 1)
    per_cpu = float(report["load1"]) / cpus
    if per_cpu > limits.max_load_per_cpu:
        return _failed(
            "load",
            f"load: 1-minute load per CPU on the edge VM is {per_cpu:.2f} (load {report['load1']} over {cpus} "
            f"CPUs), above the maximum {limits.max_load_per_cpu:g} (EDGE_VM_MAX_LOAD_PER_CPU); wait for the other "
            "work on the VM to finish (the task is retried) or raise the limit.",
        )
    return _ok("load", f"load: {per_cpu:.2f} per CPU over {cpus} CPUs (max {limits.max_load_per_cpu:g})")


def _check_clock(report: dict[str, Any], limits: HealthThresholds, local_epoch: float) -> HealthCheck:
    skew = float(report["epoch"]) - local_epoch
    if abs(skew) > limits.max_clock_skew_s:
        direction = "ahead of" if skew > 0 else "behind"
        return _failed(
            "clock_skew",
            f"clock_skew: the edge VM's clock is {abs(skew):.1f} s {direction} the Airflow worker's, above the "
            f"maximum {limits.max_clock_skew_s:g} s (EDGE_VM_MAX_CLOCK_SKEW_S); storage requests signed with a "
            "skewed clock are refused, so sync the VM with NTP (chrony or systemd-timesyncd).",
        )
    return _ok("clock_skew", f"clock_skew: {skew:+.1f} s (max {limits.max_clock_skew_s:g} s)")


def _check_gpu(report: dict[str, Any], limits: HealthThresholds) -> HealthCheck:
    count = int(report.get("gpu_count") or (1 if report["gpu"] else 0))
    if report["gpu"]:
        return _ok("gpu", f"gpu: {count} GPU(s) listed by nvidia-smi")
    if limits.require_gpu:
        return _failed(
            "gpu",
            "gpu: nvidia-smi on the edge VM lists no GPU, and a GPU is required (EDGE_VM_REQUIRE_GPU); install the "
            "NVIDIA driver on the VM, attach a GPU-capable VM size, or set EDGE_VM_REQUIRE_GPU=false.",
        )
    return _ok("gpu", "gpu: none found (not required)")


def _check_docker(report: dict[str, Any], limits: HealthThresholds) -> HealthCheck:
    if report["docker"]:
        return _ok("docker", "docker: present")
    message = (
        "docker: no `docker` on the edge VM's PATH; training runs with python3 directly, but container-based jobs "
        "need Docker installed for the SSH user"
    )
    if limits.require_docker:
        return _failed("docker", message + " (required by EDGE_VM_REQUIRE_DOCKER).")
    return HealthCheck("docker", "warning", message + ".")


def _check_blob(report: dict[str, Any]) -> HealthCheck:
    endpoint = report["blob_endpoint"]
    if not report["blob_endpoint_reachable"]:
        return _failed(
            "blob_endpoint",
            f"blob_endpoint: the edge VM cannot reach the blob endpoint {endpoint} "
            f"({report.get('blob_endpoint_error')}); "
            "the VM reads the training data itself, so open the route from the VM to the storage endpoint "
            "(DNS, firewall, proxy, or the Stack Hub CA certificate for HTTPS).",
        )
    return _ok("blob_endpoint", f"blob_endpoint: {endpoint} answered HTTP {report.get('blob_endpoint_status')}")


def evaluate_health(report: dict[str, Any], thresholds: HealthThresholds, local_epoch: float) -> HealthVerdict:
    """
    Judge a parsed health report against ``thresholds``.

    :param report: output of ``parse_health_report``.
    :param thresholds: limits to apply.
    :param local_epoch: the Airflow worker's clock (seconds since epoch) when the report arrived; the script
        samples the VM's clock just before printing, so the difference is skew plus a little latency.
    """
    if report.get("python_missing"):
        check = _failed(
            "python",
            f"python: no python3 on the PATH of the SSH user on the edge VM {report.get('hostname')} "
            f"(PATH={report.get('path')}); install Python >= {'.'.join(str(v) for v in thresholds.min_python)}.",
        )
        return HealthVerdict(ok=False, failures=[check.message], warnings=[], checks=[check])
    checks = [
        _check_python(report, thresholds),
        _check_work_dir(report),
        _check_disk(report, thresholds),
        _check_memory(report, thresholds),
        _check_load(report, thresholds),
        _check_clock(report, thresholds, local_epoch),
        _check_gpu(report, thresholds),
        _check_docker(report, thresholds),
        _check_blob(report),
    ]
    failures = [c.message for c in checks if c.status == "failed"]
    warnings = [c.message for c in checks if c.status == "warning"]
    return HealthVerdict(ok=not failures, failures=failures, warnings=warnings, checks=checks)


_DEFAULT_SUFFIX = "core.windows.net"


def blob_endpoint_from_connection_string(cs: str) -> str:
    """
    Return the blob service URL a storage connection string points at (no trailing slash).

    ``BlobEndpoint=`` wins; otherwise the URL is built from ``DefaultEndpointsProtocol``, ``AccountName`` and
    ``EndpointSuffix`` (Azure Stack Hub: ``local.azurestack.external``). ``UseDevelopmentStorage=true`` means
    the local emulator. The connection string holds the account key, so errors name keys, never values.

    :raises ValueError: neither a blob endpoint nor an account name is present.
    """
    settings: dict[str, str] = {}
    for part in cs.split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip():
            settings[name.strip().lower()] = value.strip()
    if settings.get("blobendpoint"):
        # Drop any query string: a SAS there would be a credential.
        return settings["blobendpoint"].split("?", 1)[0].rstrip("/")
    if settings.get("usedevelopmentstorage", "").lower() == "true":
        return "http://127.0.0.1:10000/devstoreaccount1"
    account = settings.get("accountname")
    if not account:
        found = ", ".join(sorted(settings)) or "none"
        raise ValueError(
            "Cannot tell the blob endpoint from the storage connection string: it has neither BlobEndpoint nor "
            f"AccountName (keys found: {found}). Add BlobEndpoint=https://<account>.blob.<region>.<fqdn> "
            "(for Azure Stack Hub: EndpointSuffix=local.azurestack.external with AccountName)."
        )
    protocol = settings.get("defaultendpointsprotocol") or "https"
    suffix = settings.get("endpointsuffix") or _DEFAULT_SUFFIX
    return f"{protocol}://{account}.blob.{suffix}"
