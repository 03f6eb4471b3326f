"""Training jobs on the edge VM: job ids, the remote directory layout, and the shell commands that drive a job.

Pure functions only (no Airflow, no SSH): the operator and the trigger run the commands built here through
``EdgeVMHook.run``, and the tests run them with ``bash -c`` against a temporary directory.

Layout under the base dir on the edge VM (default ``~/edge-training``)::

    code/<code_hash>/            the shipped include/training folder ("code version"), ``.complete`` when whole
    envs/<req_hash>/             virtualenv built from its requirements.txt, ``.complete`` when installed
    jobs/<job_id>/
        job.json                 what was submitted (no secrets)
        run.sh                   the detached job script
        .started/                created atomically once: the "this job id has been started" lock
        pid                      process group id of the running job
        boot_id  pid_start       the VM's boot id and the process's start time (/proc/<pid>/stat): a pid alone
                                 may name another process after a reboot
        exit_code                written when train.py ends (143 when killed)
        train.log                stdout and stderr of train.py
        out/  scratch/           model.onnx + metrics.json / temporary data (removed by cleanup)
        blob.cs  champion.onnx   read+list SAS of the data container (mode 600; train.py deletes it once read) /
                                 current champion (removed by cleanup)
        manifest.json            the blobs validation checked (names, ETags, MD5s, sizes; no data, no secret)
    jobs/<job_id>.failed-<epoch>/  a failed attempt set aside by the next try (train.log and job.json only)

Every terminal path removes credentials and scratch data; job dirs that ended more than
``EDGE_VM_JOB_RETENTION_DAYS`` ago are swept at the next submission.

A job id is derived from the task instance, so a retry or a restarted worker finds the same directory and
re-attaches to the job instead of training twice.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_training.exceptions import EdgeTrainingError, TrainingParamsError
from edge_training.training_params import validate_training_params

DEFAULT_BASE_DIR = "~/edge-training"
LOG_TAIL_LINES = 40
# A log tail travels in trigger events and exception messages: keep it small.
LOG_TAIL_MAX_CHARS = 8000
# train.py exit code for bad input (wrong window, no data): retrying the same job cannot help.
EXIT_BAD_INPUT = 2
EXIT_KILLED = 143
# Seconds a job may sit "started" without a pid before it counts as lost (the launcher died mid-start).
START_GRACE_SECONDS = 60

TERMINAL_STATES = frozenset({"succeeded", "failed"})

_STATUS_PREFIX = "EDGE_JOB_STATUS "


def _slug(value: str, limit: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")
    return slug[:limit].strip("_") or "x"


def job_id(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """Deterministic, shell- and filesystem-safe id of the training job of one task instance.

    A readable prefix (dag, task, run) plus a short hash of the full, unshortened identity, so two
    runs whose prefixes collide after shortening still get different ids.
    """
    identity = json.dumps([dag_id, run_id, task_id, map_index])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    parts = [_slug(dag_id, 24), _slug(task_id, 24), _slug(run_id, 32)]
    if map_index >= 0:
        parts.append(f"m{map_index}")
    return "-".join([*parts, digest])


def _check_job_id(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9_-]{1,128}", value):
        raise ValueError(
            f"Job id {value!r} is not of the form [a-z0-9_-]{{1,128}}; build it with remote_job.job_id()."
        )
    return value


def collect_code(root: Path) -> dict[str, bytes]:
    """Read the training code folder into ``{relative posix path: content}``, skipping caches."""
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_dir() or "__pycache__" in rel.parts or path.suffix in {".pyc", ".pyo"}:
            continue
        files[rel.as_posix()] = path.read_bytes()
    return files


def code_hash(files: Mapping[str, bytes]) -> str:
    """Content hash of the training code: the "code version" recorded with every model."""
    digest = hashlib.sha256()
    for name in sorted(files):
        content = files[name]
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:16]


def requirements_hash(text: str) -> str:
    """Hash of a requirements file, ignoring comments, blank lines and surrounding whitespace."""
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    normalised = "\n".join(line for line in lines if line)
    return hashlib.sha256(normalised.encode()).hexdigest()[:16]


def quote_path(path: str) -> str:
    """Shell-quote a remote path, keeping a leading ``~`` expandable (quoting alone would make it literal)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


@dataclass(frozen=True)
class RemoteLayout:
    """Paths of one base dir on the edge VM. Use an absolute base (see resolve_base_command) for SFTP."""

    base_dir: str = DEFAULT_BASE_DIR

    def code_dir(self, code_version: str) -> str:
        return f"{self.base_dir}/code/{code_version}"

    def env_dir(self, req_hash: str) -> str:
        return f"{self.base_dir}/envs/{req_hash}"

    def job_dir(self, job: str) -> str:
        return f"{self.base_dir}/jobs/{_check_job_id(job)}"

    def job_file(self, job: str, name: str) -> str:
        return f"{self.job_dir(job)}/{name}"


def resolve_base_command(base_dir: str = DEFAULT_BASE_DIR) -> str:
    """Create the base dir if needed and print its absolute path (SFTP does not expand ``~``)."""
    q = quote_path(base_dir)
    return f"umask 077 && mkdir -p {q} && cd {q} && pwd -P"


def code_present_command(base_dir: str, code_version: str) -> str:
    """Print ``present`` or ``missing`` for a shipped code version."""
    marker = quote_path(f"{RemoteLayout(base_dir).code_dir(code_version)}/.complete")
    return f"if [ -f {marker} ]; then echo present; else echo missing; fi"


def mkdirs_command(paths: Sequence[str]) -> str:
    """Create remote directories (private to the SSH user), e.g. before an SFTP upload."""
    return "umask 077 && mkdir -p " + " ".join(quote_path(p) for p in paths)


def mark_code_complete_command(base_dir: str, code_version: str) -> str:
    """Mark a code version as fully uploaded; written last so a half upload is never used."""
    return "touch " + quote_path(f"{RemoteLayout(base_dir).code_dir(code_version)}/.complete")


def prepare_env_command(
    base_dir: str,
    req_hash: str,
    requirements_path: str,
    python: str = "python3",
    pip_args: Sequence[str] = (),
    lock_timeout: int = 1800,
) -> str:
    """Build the training virtualenv for one requirements hash, once.

    Idempotent: an env with its ``.complete`` marker is reused as is. ``flock`` serialises two runs that
    need the same env; the second one finds the marker when it gets the lock. A half-built env (no marker,
    e.g. pip was interrupted) is removed and built again.
    """
    env = RemoteLayout(base_dir).env_dir(req_hash)
    qenv = quote_path(env)
    pip = " ".join(shlex.quote(a) for a in pip_args)
    return f"""set -eu
umask 077
env_dir={qenv}
if [ -f "$env_dir/.complete" ]; then echo "training env ready (cached): $env_dir"; exit 0; fi
mkdir -p "$(dirname "$env_dir")"
exec 9>"$env_dir.lock"
if ! flock -w {int(lock_timeout)} 9; then
  echo "training env $env_dir: another run has held its lock for {int(lock_timeout)}s; check for a stuck pip on the edge VM" >&2
  exit 3
fi
if [ -f "$env_dir/.complete" ]; then echo "training env ready (built by another run): $env_dir"; exit 0; fi
rm -rf "$env_dir"
{shlex.quote(python)} -m venv "$env_dir"
"$env_dir/bin/python" -m pip install --disable-pip-version-check --no-input -q {pip} -r {quote_path(requirements_path)}
touch "$env_dir/.complete"
echo "training env built: $env_dir"
"""


def parse_training_params(value: Mapping[str, Any] | str | None) -> dict:
    """
    The training hyperparameters as a dict, checked against the allowed keys and bounds.

    :param value: a mapping, or JSON text (a rendered template may hand them over as text); empty means none.
    :raises TrainingParamsError: the text is not JSON, or a key or value is outside
        ``training_params.TRAINING_PARAMS_SCHEMA`` (the same schema the DAG's Param is checked against).
    """
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise TrainingParamsError(
                f"training_params is not valid JSON ({err.msg} at character {err.pos}); pass a JSON object such "
                'as {"n_estimators": 200, "max_depth": 6}.'
            ) from None
    return validate_training_params(value if value is not None else {})


def training_manifest(validation: Mapping[str, Any] | str | None) -> dict[str, Any] | None:
    """The document ``train.py --manifest`` reads, from the validation task's result (dict, or JSON text).

    ``{"validation_id", "data_fingerprint", "blobs"}``, ``blobs`` being the result's ``manifest``: exactly the
    blobs validation checked, as ``{"name", "etag", "content_md5", "size"}``. None when the result has no manifest.

    :param validation: the ``validate_data`` task's XCom result.
    """
    if isinstance(validation, str):
        validation = json.loads(validation) if validation.strip() else None
    if not validation or validation.get("manifest") is None:
        return None
    blobs = validation["manifest"]
    if not isinstance(blobs, list) or not blobs:
        raise EdgeTrainingError(
            f"Checked the validation result {validation.get('validation_id')!r} for the blobs it validated; its "
            f"manifest is {'empty' if isinstance(blobs, list) else type(blobs).__name__}, so there is nothing "
            "validated to train on. Re-run the DAG run from validate_data."
        )
    return {
        "validation_id": validation.get("validation_id"),
        "data_fingerprint": validation.get("data_fingerprint"),
        "blobs": blobs,
    }


def training_args(
    container: str,
    start: str,
    end: str,
    holdout_days: int = 1,
    params: Mapping[str, Any] | None = None,
    champion: bool = False,
    manifest: bool = False,
    profile_grid: Mapping[str, Any] | None = None,
) -> list[str]:
    """Arguments of ``train.py``; file arguments are relative to the job dir, where the job runs.

    :param champion: the job dir holds ``champion.onnx``, to be scored on the same holdout.
    :param manifest: the job dir holds ``manifest.json``, the blobs validation checked: train exactly those.
    :param profile_grid: ``{feature: {lo, hi, bins}}`` (``edge_training.drift.suite_grid``): the job also writes the
        training window's reference data profile, ``reference_profile.json``.
    """
    args = [
        "--container", container,
        "--start", start,
        "--end", end,
        "--out", "out",
        "--scratch", "scratch",
        "--holdout-days", str(int(holdout_days)),
        "--connection-string-file", "blob.cs",
    ]  # fmt: skip
    if params:
        args += ["--params", json.dumps(dict(params), sort_keys=True)]
    if champion:
        args += ["--champion", "champion.onnx"]
    if manifest:
        args += ["--manifest", "manifest.json"]
    if profile_grid:
        args += ["--profile-grid", json.dumps(dict(profile_grid), sort_keys=True)]
    return args


def _run_script(code_version: str, req_hash: str, args: Sequence[str]) -> str:
    # Relative paths: the job dir sits two levels under the base dir, so the script works wherever the
    # base dir is (and whatever ``~`` is) on the VM.
    python = f"../../envs/{req_hash}/bin/python"
    train = f"../../code/{code_version}/train.py"
    command = " ".join(shlex.quote(a) for a in [python, train, *args])
    return f"""#!/usr/bin/env bash
# Edge training job: runs detached in its own session; its pid is the process group to signal.
cd "$(dirname "$0")" || exit 1
# Who the job's process is, beside its pid: after a reboot the same pid may be another process.
cat /proc/sys/kernel/random/boot_id > boot_id 2>/dev/null
if read -r stat < /proc/$$/stat 2>/dev/null; then set -- ${{stat##*) }}; echo "${{20}}" > pid_start; fi
echo $$ > pid.tmp && mv pid.tmp pid
# Stopped while it was starting: do not train.
[ -e killed ] && exit 0
{command} > train.log 2>&1
ec=$?
# Whoever still watches the job (a deferred task marked failed before a triggerer picked it up: nobody), what it
# read is no longer needed: credentials, champion and scratch data go before the exit code says the job ended.
rm -rf blob.cs champion.onnx scratch
echo $ec > exit_code.tmp && mv exit_code.tmp exit_code
"""


JOB_SCRIPT = r'''
import json, os, re, shutil, signal, sys, time

# Files that must not outlive a job on the VM: the blob credentials, the champion it was sent, its scratch data.
SECRETS_AND_SCRATCH = ("blob.cs", "champion.onnx", "scratch")


def read(d, name):
    try:
        with open(os.path.join(d, name), errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def mtime(d, name):
    try:
        return os.stat(os.path.join(d, name)).st_mtime
    except OSError:
        return None


def proc_fields(pid):
    """Fields of /proc/<pid>/stat after the command name (state first), or None when there is no such process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def job_process(d):
    """(pid, "") while the job's own process runs, else (None, why it is not running)."""
    text = read(d, "pid")
    if not text or not text.isdigit() or int(text) <= 1:
        return None, "no pid"
    pid = int(text)
    # After a reboot the same pid may belong to any process: boot id and start time tell them apart.
    boot = read(d, "boot_id")
    if boot and read("/proc/sys/kernel/random", "boot_id") not in (None, boot):
        return None, "the edge VM rebooted since the job started"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None, "the job process is gone"
    except PermissionError:
        return None, "pid %d now belongs to another user's process" % pid
    fields = proc_fields(pid)
    if fields is None:
        return pid, ""  # no /proc to look into: a live pid is all there is to go by
    if fields[0] == "Z":
        # An exited process stays visible until its new parent reaps it: that is not alive.
        return None, "the job process is gone"
    started = read(d, "pid_start")
    if started and len(fields) > 19 and fields[19] != started:
        return None, "pid %d now belongs to another process" % pid
    return pid, ""


def tail(d):
    try:
        with open(os.path.join(d, "train.log"), "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            lines = f.read().decode("utf-8", "replace").splitlines()[-__LINES__:]
    except OSError:
        return ""
    return "\n".join(lines)[-__CHARS__:]


def job_status(d, extra=None):
    st = {"state": "missing", "exit_code": None, "pid": None, "reason": "", "log_tail": "",
          "started_at": mtime(d, ".started"), "finished_at": None, "job": None}
    st.update(extra or {})
    job = read(d, "job.json")
    if job:
        try:
            st["job"] = json.loads(job)
        except ValueError:
            pass
    if st["started_at"] is None:
        st["reason"] = "no job with this id has been started"
        return st
    pid = read(d, "pid")
    st["pid"] = int(pid) if pid and pid.isdigit() else None

    def finished():
        code = read(d, "exit_code")
        if code is None or not code.lstrip("-").isdigit():
            return False
        st["exit_code"] = int(code)
        st["finished_at"] = mtime(d, "exit_code")
        st["state"] = "succeeded" if st["exit_code"] == 0 else "failed"
        if os.path.exists(os.path.join(d, "killed")):
            st["reason"] = "killed"
        else:
            st["reason"] = "train.py exited with code %d" % st["exit_code"]
        return True

    if finished():
        return st
    running, why = job_process(d)
    if running:
        st["state"] = "running"
    elif st["pid"] is None and time.time() - st["started_at"] < __GRACE__:
        st["state"] = "running"
        st["reason"] = "starting"
    elif not finished():  # the job may have written its exit code meanwhile
        st["state"] = "failed"
        if st["pid"] is None:
            st["reason"] = "lost: the job never wrote a pid within __GRACE__ s of its start (the start command died)"
        else:
            st["reason"] = ("lost: %s, without an exit code (edge VM rebooted, or the process was killed "
                            "outside Airflow)" % why)
    return st


def group_alive(pgid):
    try:
        entries = os.listdir("/proc")
    except OSError:
        return False
    for entry in entries:
        if entry.isdigit():
            fields = proc_fields(int(entry))
            if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
                return True
    return False


def write_exit_code(d, code):
    with open(os.path.join(d, "exit_code.tmp"), "w") as f:
        f.write("%d\n" % code)
    os.replace(os.path.join(d, "exit_code.tmp"), os.path.join(d, "exit_code"))


def kill(d, grace):
    if read(d, "exit_code") is not None:
        return "job has already ended: nothing to kill"
    if mtime(d, ".started") is None:
        return "job was never started: nothing to kill"
    # Marked before signalling: the status says "killed", and a job still starting does not start train.py.
    open(os.path.join(d, "killed"), "a").close()
    pid, why = job_process(d)
    if pid is None:
        if read(d, "pid") is None:
            write_exit_code(d, __KILLED__)
            return "job had no pid yet: marked killed, it will not start training"
        return "job process is not running (%s): nothing to kill" % why
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
            # A stopped process (SIGSTOP, a debugger) acts on TERM only once it runs again.
            os.killpg(pid, signal.SIGCONT)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.time() + grace
        # Exited members linger as zombies until reaped: wait until no live one is left in the group.
        while group_alive(pid) and time.time() < deadline:
            time.sleep(0.2)
        if not group_alive(pid):
            break
    if read(d, "exit_code") is None:
        write_exit_code(d, __KILLED__)
    return "killed job process group %d" % pid


def remove(d, names):
    gone = 0
    for name in names:
        path = os.path.join(d, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            gone += 1
        elif os.path.lexists(path):
            os.remove(path)
            gone += 1
    return gone


def cleanup(d, outputs):
    """Remove credentials and scratch data (and the outputs, once fetched) of a job that is not running."""
    if not os.path.isdir(d):
        return "no job dir: nothing to clean up"
    st = job_status(d)
    if st["state"] == "running":
        return "job is running: left in place"
    names = SECRETS_AND_SCRATCH + (("out",) if outputs else ())
    return "removed %d of %s" % (remove(d, names), ", ".join(names))


def archive(d):
    """Move a failed job's dir aside (<id>.failed-<epoch>) so that the next try can start the job again."""
    if not os.path.isdir(d):
        return "no job dir: nothing to set aside"
    st = job_status(d)
    if st["state"] != "failed":
        return "job is not failed (%s): left in place" % st["state"]
    dest = "%s.failed-%d" % (d, time.time())
    os.rename(d, dest)
    remove(dest, SECRETS_AND_SCRATCH + ("out",))
    return "archived failed job to %s (%s)" % (dest, st["reason"])


def discard(d):
    """Remove the dir of a job whose submission failed before it started (credentials may be in it)."""
    if not os.path.isdir(d):
        return "no job dir: nothing to discard"
    if mtime(d, ".started") is not None:
        return "job was started: left in place"
    shutil.rmtree(d, ignore_errors=True)
    return "removed the dir of the job that never started"


ARCHIVED = re.compile(r"\.failed-(\d+)$")


def sweep(base, days):
    """Remove job dirs that ended more than ``days`` ago (archived, finished, or never started); never a running one."""
    jobs = os.path.join(base, "jobs")
    cutoff = time.time() - days * 86400
    swept = running = recent = 0
    for name in sorted(os.listdir(jobs)) if os.path.isdir(jobs) else ():
        d = os.path.join(jobs, name)
        if not os.path.isdir(d) or os.path.islink(d):
            continue
        archived = ARCHIVED.search(name)
        if archived:
            ended = int(archived.group(1))
        else:
            st = job_status(d)
            if st["state"] == "running":
                running += 1
                continue
            ended = st["finished_at"] or st["started_at"] or os.stat(d).st_mtime
        if ended >= cutoff:
            recent += 1
            continue
        shutil.rmtree(d, ignore_errors=True)
        swept += 1
    return "swept %d job dirs that ended more than %g days ago; kept %d running and %d recent" % (
        swept, days, running, recent)


action, path = sys.argv[1], sys.argv[2]
options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
if action == "status":
    st = job_status(path, options)
    st["log_tail"] = tail(path)
    print(__PREFIX__ + json.dumps(st))
elif action == "stop":
    print(kill(path, options.get("grace", 10)) if os.path.isdir(path) else "no job dir: nothing to kill")
    print(cleanup(path, outputs=False))
elif action == "cleanup":
    print(cleanup(path, outputs=options.get("outputs", True)))
elif action == "archive":
    print(archive(path))
elif action == "discard":
    print(discard(path))
elif action == "sweep":
    print(sweep(path, float(options["days"])))
else:
    sys.exit("unknown action %r" % action)
'''


def _fill(template: str, values: Mapping[str, Any]) -> str:
    for name, value in values.items():
        template = template.replace(name, str(value))
    return template


JOB_SCRIPT = _fill(
    JOB_SCRIPT,
    {
        "__LINES__": LOG_TAIL_LINES,
        "__CHARS__": LOG_TAIL_MAX_CHARS,
        "__GRACE__": START_GRACE_SECONDS,
        "__KILLED__": EXIT_KILLED,
        "__PREFIX__": repr(_STATUS_PREFIX),
    },
)


def _status_snippet(job_dir_expr: str, extra: Mapping[str, Any] | None = None) -> str:
    args = [shlex.quote(JOB_SCRIPT), "status", job_dir_expr]
    if extra:
        args.append(shlex.quote(json.dumps(dict(extra))))
    return "python3 -c " + " ".join(args)


def _job_script_command(action: str, path: str, options: Mapping[str, Any] | None = None) -> str:
    args = ["python3", "-", action, quote_path(path)]
    if options:
        args.append(shlex.quote(json.dumps(dict(options), sort_keys=True)))
    return " ".join(args)


def status_command(base_dir: str, job: str, script_on_stdin: bool = False) -> str:
    """Print one status line for the job; parse it with :func:`parse_status`.

    With ``script_on_stdin`` the command is short (``python3 - status <job dir>``) and the caller sends
    :data:`JOB_SCRIPT` as its stdin: polling then logs one short line per check, not the whole script.
    """
    job_dir = RemoteLayout(base_dir).job_dir(job)
    if script_on_stdin:
        return _job_script_command("status", job_dir)
    return _status_snippet(quote_path(job_dir))


def start_job_command(
    base_dir: str,
    job: str,
    code_version: str,
    req_hash: str,
    args: Sequence[str],
) -> str:
    """Start ``train.py`` detached, at most once per job id, and print the job's status line.

    ``mkdir jobs/<id>/.started`` is the atomic lock: whoever creates it starts the job; anyone else
    (a retry, a second worker racing) starts nothing and prints the state of the existing job.
    The status line carries ``"started": true`` only for the call that actually started it.
    """
    q = quote_path(RemoteLayout(base_dir).job_dir(job))
    script = _run_script(code_version, req_hash, args)
    return f"""set -u
umask 077
job_dir={q}
mkdir -p "$job_dir"
if ! mkdir "$job_dir/.started" 2>/dev/null; then
  {_status_snippet('"$job_dir"', {"started": False})}
  exit 0
fi
cd "$job_dir"
printf '%s' {shlex.quote(script)} > run.sh
mkdir -p out scratch
setsid nohup bash run.sh </dev/null >/dev/null 2>&1 &
# run.sh writes its own pid as soon as it runs; wait for it so the caller sees a pid.
for _ in $(seq 1 100); do [ -s pid ] && break; sleep 0.1; done
{_status_snippet('"$job_dir"', {"started": True})}
"""


def kill_command(base_dir: str, job: str, grace_seconds: int = 10) -> str:
    """Stop the job and remove its credentials and scratch data (send :data:`JOB_SCRIPT` as stdin).

    The whole process group gets TERM, then KILL after ``grace_seconds``, and the job records exit code 143. Only
    the job's own process is signalled: a pid that another process holds after a reboot (other boot id or start
    time) is left alone. A job that has no pid yet is marked killed and does not start training. The outputs of a
    job that had already succeeded are kept, so that a later try can still fetch them.
    """
    return _job_script_command("stop", RemoteLayout(base_dir).job_dir(job), {"grace": max(1, int(grace_seconds))})


def cleanup_command(base_dir: str, job: str, outputs: bool = True) -> str:
    """Remove what must not linger on the VM: credentials, champion, scratch data and (``outputs``) out/.

    Send :data:`JOB_SCRIPT` as stdin. Decided on the VM: a job that is still running (or starting) is left as it
    is, whatever the caller believed; train.log and job.json stay, so a retry still re-attaches to the job.
    """
    return _job_script_command("cleanup", RemoteLayout(base_dir).job_dir(job), {"outputs": bool(outputs)})


def archive_failed_command(base_dir: str, job: str) -> str:
    """Move a failed job's dir aside (``jobs/<id>.failed-<epoch>``) so the next task try can start afresh.

    Send :data:`JOB_SCRIPT` as stdin. Decided on the VM with the status check's own rules: a job that is running
    or still starting (no pid yet, within :data:`START_GRACE_SECONDS`) is never moved, so two racing retries cannot
    archive the job one of them just started; a job lost before it wrote its pid counts as failed. The archived
    copy keeps train.log and job.json only.
    """
    return _job_script_command("archive", RemoteLayout(base_dir).job_dir(job))


def discard_unstarted_command(base_dir: str, job: str) -> str:
    """Remove the dir of a job whose submission failed before the job started (send :data:`JOB_SCRIPT` as stdin).

    Only when the start lock (``.started``) was never taken: a job the start command did launch, even if its
    answer was lost, is left to the status check.
    """
    return _job_script_command("discard", RemoteLayout(base_dir).job_dir(job))


def sweep_command(base_dir: str, retention_days: float) -> str:
    """Remove job dirs that ended more than ``retention_days`` ago; prints counts only (send :data:`JOB_SCRIPT`).

    Archived failed attempts, finished jobs and submissions that never started are swept; a running or starting
    job never is, however old.
    """
    return _job_script_command("sweep", base_dir, {"days": float(retention_days)})


def blob_connection_string(login: str | None, password: str | None, host: str | None, extra: Mapping) -> str:
    """Connection string the edge VM uses to read the blob container, from a wasb connection's fields.

    Supports the ``connection_string`` extra (what the local stack and Stack Hub setups use), an account
    name + key (login/password, with ``host`` as the blob endpoint, e.g. Stack Hub's
    ``https://<account>.blob.local.azurestack.external``), or a ``sas_token`` extra with ``host``.
    """
    if extra.get("connection_string"):
        return str(extra["connection_string"])
    endpoint = (host or "").rstrip("/")
    if login and password:
        endpoint = endpoint or f"https://{login}.blob.core.windows.net"
        protocol = "http" if endpoint.startswith("http://") else "https"
        return (
            f"DefaultEndpointsProtocol={protocol};AccountName={login};AccountKey={password};"
            f"BlobEndpoint={endpoint};"
        )
    sas = extra.get("sas_token")
    if sas and endpoint:
        return f"BlobEndpoint={endpoint};SharedAccessSignature={str(sas).lstrip('?')}"
    raise EdgeTrainingError(
        "Checked the blob connection for credentials the edge VM can use; found neither a 'connection_string' "
        "extra, nor login (account name) + password (account key), nor a 'sas_token' extra with host. "
        "Add one of them to the connection (the VM reads the data itself, so it needs its own credentials)."
    )


def _connection_settings(connection_string: str) -> dict[str, str]:
    """``Key=Value;...`` of a storage connection string, keys lower-cased (values may contain ``=``)."""
    settings = {}
    for part in connection_string.split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip():
            settings[name.strip().lower()] = value.strip()
    return settings


def scoped_blob_connection_string(connection_string: str, container: str, expiry: datetime) -> tuple[str, bool]:
    """The credential the edge VM gets for one job: a read+list SAS on ``container`` only, expiring at ``expiry``.

    Derived from the connection's account key (which never leaves Airflow); a connection that holds a SAS
    rather than a key is passed through unchanged, since a SAS cannot mint another. Returns
    ``(connection string, derived)``, ``derived`` False for a passed-through SAS.

    :param connection_string: the blob connection's connection string (see :func:`blob_connection_string`).
    :param container: the data container the job reads; the SAS is valid for it alone.
    :param expiry: when the SAS stops working (the training timeout: the job is stopped then anyway).
    """
    settings = _connection_settings(connection_string)
    if not settings.get("accountkey"):
        if settings.get("sharedaccesssignature"):
            return connection_string, False
        raise EdgeTrainingError(
            "Checked the blob connection string for an AccountKey (to derive a read+list SAS for the edge VM) or a "
            f"SharedAccessSignature; found neither (settings: {', '.join(sorted(settings)) or 'none'}). Give the "
            "connection the storage account's key or a SAS with read and list permission on the container."
        )
    if not settings.get("accountname"):
        raise EdgeTrainingError(
            "Checked the blob connection string for the AccountName that goes with its AccountKey; it has none. "
            "Add AccountName=<storage account> to the connection string."
        )
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from edge_training.health import blob_endpoint_from_connection_string

    endpoint = blob_endpoint_from_connection_string(connection_string)
    sas = generate_container_sas(
        settings["accountname"],
        container,
        account_key=settings["accountkey"],
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=expiry.astimezone(timezone.utc),
        # For an https endpoint the token must not work over plain HTTP either.
        protocol="https" if endpoint.startswith("https://") else None,
    )
    return f"BlobEndpoint={endpoint};SharedAccessSignature={sas}", True


@dataclass(frozen=True)
class JobStatus:
    """State of one job on the edge VM, as printed by :func:`status_command`."""

    state: str
    exit_code: int | None = None
    pid: int | None = None
    log_tail: str = ""
    reason: str = ""
    started: bool | None = None
    started_at: float | None = None
    finished_at: float | None = None
    job: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def training_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round(self.finished_at - self.started_at, 1)


class StatusParseError(ValueError):
    """The status command printed no status line (e.g. no python3 on the VM, or a shell error)."""


def parse_status(stdout: str) -> JobStatus:
    """Parse the output of :func:`status_command` / :func:`start_job_command`."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(_STATUS_PREFIX):
            data = json.loads(line[len(_STATUS_PREFIX) :])
            return JobStatus(
                state=data["state"],
                exit_code=data.get("exit_code"),
                pid=data.get("pid"),
                log_tail=data.get("log_tail") or "",
                reason=data.get("reason") or "",
                started=data.get("started"),
                started_at=data.get("started_at"),
                finished_at=data.get("finished_at"),
                job=data.get("job"),
            )
    raise StatusParseError(
        "Checked the edge VM job status output for a status line; found none "
        f"({len(stdout)} characters of output). Check that python3 is on the SSH user's PATH on the edge VM."
    )


def status_event(job: str, status: JobStatus, timed_out: bool = False) -> dict[str, Any]:
    """The trigger event payload for a terminal (or timed-out) job status."""
    if timed_out:
        return {
            "status": "error",
            "job_id": job,
            "timed_out": True,
            "message": f"did not finish before the timeout (last state: {status.state})",
            "log_tail": status.log_tail,
            "exit_code": status.exit_code,
        }
    ok = status.state == "succeeded"
    return {
        "status": "success" if ok else "error",
        "job_id": job,
        "timed_out": False,
        "message": "finished successfully" if ok else f"failed: {status.reason}",
        "log_tail": status.log_tail,
        "exit_code": status.exit_code,
    }
