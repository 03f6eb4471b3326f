"""The edge VM job commands, run for real with bash against a temporary base dir and a tiny fake train.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_training import remote_job as rj

CODE = "c0de"
REQ = "feed"

FAKE_TRAIN = r'''
import json, os, subprocess, sys, time
args = sys.argv[1:]
opts = dict(zip(args[::2], args[1::2]))
params = json.loads(opts.get("--params", "{}"))
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs.log"), "a") as f:
    f.write(json.dumps(args) + "\n")
for i in range(params.get("lines", 1)):
    print(f"line {i}", flush=True)
if params.get("child"):
    child = subprocess.Popen(["sleep", "300"])
    with open("child.pid", "w") as f:
        f.write(str(child.pid))
time.sleep(params.get("sleep", 0))
if params.get("fail"):
    print("boom: training failed", file=sys.stderr, flush=True)
    sys.exit(params["fail"])
os.makedirs(opts["--out"], exist_ok=True)
with open(os.path.join(opts["--out"], "model.onnx"), "w") as f:
    f.write("model")
'''


def sh(command: str, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, input=input, timeout=timeout)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A base dir laid out like the edge VM's, with a fake train.py and an "env" that is this Python."""
    base = tmp_path / "edge training"  # a space proves every path is quoted
    (base / "code" / CODE).mkdir(parents=True)
    (base / "code" / CODE / "train.py").write_text(FAKE_TRAIN)
    (base / "envs" / REQ / "bin").mkdir(parents=True)
    (base / "envs" / REQ / "bin" / "python").symlink_to(sys.executable)
    return base


def start(base: Path, job: str, **params) -> rj.JobStatus:
    args = rj.training_args("sensor-readings", "2026-11-01", "2026-11-08", params=params)
    result = sh(rj.start_job_command(str(base), job, CODE, REQ, args))
    assert result.returncode == 0, result.stderr
    return rj.parse_status(result.stdout)


def job_script(command: str) -> subprocess.CompletedProcess:
    """Run a job-script command (stop, cleanup, archive, discard, sweep) as the operator does: the script on stdin."""
    result = sh(command, input=rj.JOB_SCRIPT)
    assert result.returncode == 0, result.stderr
    return result


def status(base: Path, job: str) -> rj.JobStatus:
    result = sh(rj.status_command(str(base), job))
    assert result.returncode == 0, result.stderr
    return rj.parse_status(result.stdout)


def wait_terminal(base: Path, job: str, timeout: float = 20) -> rj.JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = status(base, job)
        if st.terminal:
            return st
        time.sleep(0.1)
    raise AssertionError(f"job {job} did not finish: {st}")


def runs(base: Path) -> list[list[str]]:
    log = base / "code" / CODE / "runs.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # An exited process lingers as a zombie until init reaps it: that is not alive.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- naming and hashing -------------------------------------------------------------------------------------


def test_job_id_is_deterministic_safe_and_readable():
    run_id = "scheduled__2026-11-20T02:00:00+00:00"
    a = rj.job_id("edge_training", run_id, "train_on_edge_vm")
    assert a == rj.job_id("edge_training", run_id, "train_on_edge_vm")
    assert a.startswith("edge_training-train_on_edge_vm-scheduled_2026_11_20t02_00_00")
    assert set(a) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-")
    assert len(a) <= 128


def test_job_id_differs_for_every_part_of_the_identity_even_when_prefixes_collide():
    long_run = "manual__2026-11-20T02:00:00.123456+00:00" + "x" * 50
    ids = {
        rj.job_id("edge_training", long_run + "a", "train"),
        rj.job_id("edge_training", long_run + "b", "train"),  # same shortened prefix
        rj.job_id("edge_training", "r1", "train"),
        rj.job_id("edge_training", "r1", "train", map_index=0),
        rj.job_id("edge_training", "r1", "train", map_index=1),
        rj.job_id("other", "r1", "train"),
        rj.job_id("edge_training", "r1", "other"),
        rj.job_id("Edge Training", "r1", "train"),  # same slug as "edge_training", different dag
    }
    assert len(ids) == 8
    assert "-m1-" in rj.job_id("edge_training", "r1", "train", map_index=1)


def test_layout_refuses_a_job_id_that_could_escape_the_jobs_dir():
    with pytest.raises(ValueError, match="remote_job.job_id"):
        rj.RemoteLayout("/base").job_dir("../../etc")


def test_code_hash_tracks_content_and_names_but_not_order(tmp_path):
    files = {"train.py": b"print(1)", "requirements.txt": b"numpy==2.0\n"}
    h = rj.code_hash(files)
    assert h == rj.code_hash(dict(reversed(list(files.items()))))
    assert h != rj.code_hash({**files, "train.py": b"print(2)"})
    assert h != rj.code_hash({"train2.py": b"print(1)", "requirements.txt": b"numpy==2.0\n"})

    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "train.py").write_bytes(b"print(1)")
    (tmp_path / "pkg" / "util.py").write_bytes(b"x = 1")
    (tmp_path / "pkg" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\0")
    assert rj.collect_code(tmp_path) == {"pkg/util.py": b"x = 1", "train.py": b"print(1)"}


def test_requirements_hash_ignores_comments_and_blank_lines_only():
    text = "# pins\nnumpy==2.0\n\nscikit-learn==1.9.1  # model\n"
    assert rj.requirements_hash(text) == rj.requirements_hash("numpy==2.0\nscikit-learn==1.9.1\n")
    assert rj.requirements_hash(text) != rj.requirements_hash("numpy==2.1\nscikit-learn==1.9.1\n")


def test_quote_path_keeps_home_expandable_and_everything_else_literal():
    out = sh(f"printf '%s|' {rj.quote_path('~/a b')} {rj.quote_path('/x/$(id)')} {rj.quote_path('~')}").stdout
    assert out == f"{os.environ['HOME']}/a b|/x/$(id)|{os.environ['HOME']}|"


# -- start / status / kill / cleanup, for real ---------------------------------------------------------------


def test_status_of_a_job_never_started_is_missing(base):
    st = status(base, "nojob")
    assert st.state == "missing" and st.pid is None and not st.terminal


def test_start_twice_starts_one_job_and_captures_its_exit_code(base):
    first = start(base, "job-1", sleep=0.5)
    second = start(base, "job-1", sleep=0.5)

    assert first.started is True and first.state == "running" and first.pid
    assert second.started is False and second.pid == first.pid
    final = wait_terminal(base, "job-1")
    assert (final.state, final.exit_code) == ("succeeded", 0)
    assert final.training_seconds is not None and final.training_seconds >= 0.4
    assert start(base, "job-1").started is False  # a finished job is never started again either
    assert len(runs(base)) == 1
    assert (base / "jobs" / "job-1" / "out" / "model.onnx").read_text() == "model"


def test_concurrent_starts_race_to_exactly_one_job(base):
    args = rj.training_args("c", "2026-11-01", "2026-11-08", params={"sleep": 0.5})
    command = rj.start_job_command(str(base), "job-race", CODE, REQ, args)
    procs = [subprocess.Popen(["bash", "-c", command], stdout=subprocess.PIPE, text=True) for _ in range(6)]
    statuses = [rj.parse_status(p.communicate(timeout=30)[0]) for p in procs]

    assert sum(1 for s in statuses if s.started) == 1
    assert wait_terminal(base, "job-race").state == "succeeded"
    assert len(runs(base)) == 1


def test_arguments_reach_train_py_literally(base):
    hostile = {"note": "'; touch pwned; echo '$(touch pwned2)` `", "sleep": 0}
    start(base, "job-args", **hostile)
    wait_terminal(base, "job-args")
    (args,) = runs(base)
    assert json.loads(args[args.index("--params") + 1])["note"] == hostile["note"]
    assert args[:4] == ["--container", "sensor-readings", "--start", "2026-11-01"]
    assert not list(base.rglob("pwned*"))


def test_failed_job_reports_exit_code_and_the_last_40_log_lines(base):
    start(base, "job-fail", lines=100, fail=3)
    st = wait_terminal(base, "job-fail")
    assert (st.state, st.exit_code) == ("failed", 3)
    assert "exited with code 3" in st.reason
    lines = st.log_tail.splitlines()
    assert len(lines) == rj.LOG_TAIL_LINES
    assert lines[-1] == "boom: training failed" and lines[0] == "line 61"


def test_kill_stops_the_whole_process_group_and_records_exit_143(base):
    st = start(base, "job-kill", child=True, sleep=300)
    job_dir = base / "jobs" / "job-kill"
    deadline = time.monotonic() + 10
    while not (job_dir / "child.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int((job_dir / "child.pid").read_text())
    assert alive(st.pid) and alive(child)

    began = time.monotonic()
    job_script(rj.kill_command(str(base), "job-kill"))
    assert time.monotonic() - began < 5  # TERM was enough: no wait for the KILL grace period

    assert not alive(st.pid) and not alive(child)
    final = status(base, "job-kill")
    assert (final.state, final.exit_code, final.reason) == ("failed", rj.EXIT_KILLED, "killed")


def test_a_job_whose_process_vanished_without_exit_code_is_failed_lost(base):
    st = start(base, "job-lost", sleep=300)
    os.killpg(st.pid, signal.SIGKILL)  # what a VM reboot or an OOM kill looks like from the job dir
    time.sleep(0.3)
    final = status(base, "job-lost")
    assert final.state == "failed" and final.exit_code is None
    assert final.reason.startswith("lost")


def test_a_job_that_ends_removes_its_credentials_and_scratch_itself(base):
    job_dir = base / "jobs" / "job-self"
    job_dir.mkdir(parents=True)
    (job_dir / "blob.cs").write_text("SharedAccessSignature=sv=x&sig=secret")
    (job_dir / "champion.onnx").write_text("champ")
    start(base, "job-self", fail=1)
    assert wait_terminal(base, "job-self").state == "failed"
    assert not {"blob.cs", "champion.onnx", "scratch"} & {p.name for p in job_dir.iterdir()}


def test_cleanup_removes_outputs_scratch_and_credentials_but_keeps_log_and_job_json(base):
    job_dir = base / "jobs" / "job-clean"
    job_dir.mkdir(parents=True)
    (job_dir / "blob.cs").write_text("AccountKey=secret")
    (job_dir / "champion.onnx").write_text("champ")
    (job_dir / "job.json").write_text(json.dumps({"code_version": CODE}))
    start(base, "job-clean")
    wait_terminal(base, "job-clean")
    (job_dir / "scratch").mkdir()  # e.g. left by a train.py killed with the whole job, before run.sh removed it
    (job_dir / "scratch" / "part.csv").write_text("rows")

    job_script(rj.cleanup_command(str(base), "job-clean"))

    left = sorted(p.name for p in job_dir.iterdir())
    assert "train.log" in left and "job.json" in left
    assert not {"out", "scratch", "blob.cs", "champion.onnx"} & set(left)
    after = status(base, "job-clean")  # still re-attachable: a retry sees the finished job
    assert after.state == "succeeded" and after.job == {"code_version": CODE}


def test_archive_moves_a_failed_job_aside_but_never_a_running_one(base):
    start(base, "job-arch", fail=1)
    wait_terminal(base, "job-arch")
    (base / "jobs" / "job-arch" / "blob.cs").write_text("secret")
    out = job_script(rj.archive_failed_command(str(base), "job-arch")).stdout
    assert "archived" in out
    assert status(base, "job-arch").state == "missing"
    (archived,) = [p for p in (base / "jobs").iterdir() if p.name.startswith("job-arch.failed-")]
    assert (archived / "train.log").exists() and not (archived / "blob.cs").exists()

    # The next start trains again under the same id.
    assert start(base, "job-arch").started is True
    assert wait_terminal(base, "job-arch").state == "succeeded"

    running = start(base, "job-busy", sleep=300)
    assert "left in place" in job_script(rj.archive_failed_command(str(base), "job-busy")).stdout
    assert status(base, "job-busy").state == "running"
    job_script(rj.kill_command(str(base), "job-busy"))
    time.sleep(0.3)
    assert not alive(running.pid)


def started_long_ago(base: Path, job: str, seconds: float = rj.START_GRACE_SECONDS + 5) -> Path:
    """A job dir whose start lock was taken ``seconds`` ago (what a start command that died leaves behind)."""
    job_dir = base / "jobs" / job
    (job_dir / ".started").mkdir(parents=True, exist_ok=True)
    then = time.time() - seconds
    os.utime(job_dir / ".started", (then, then))
    return job_dir


def test_a_job_lost_before_it_wrote_its_pid_is_set_aside_after_the_start_grace_and_trains_again(base):
    job_dir = base / "jobs" / "job-nopid"
    (job_dir / ".started").mkdir(parents=True)
    (job_dir / "blob.cs").write_text("AccountKey=secret")
    young = status(base, "job-nopid")
    assert (young.state, young.reason) == ("running", "starting")  # within the grace: maybe still starting
    assert "left in place" in job_script(rj.archive_failed_command(str(base), "job-nopid")).stdout

    started_long_ago(base, "job-nopid")
    lost = status(base, "job-nopid")
    assert lost.state == "failed" and lost.exit_code is None
    assert lost.reason == "lost: the job never wrote a pid within 60 s of its start (the start command died)"
    assert "archived failed job" in job_script(rj.archive_failed_command(str(base), "job-nopid")).stdout
    (archived,) = (base / "jobs").glob("job-nopid.failed-*")
    assert not (archived / "blob.cs").exists()
    assert start(base, "job-nopid").started is True
    assert wait_terminal(base, "job-nopid").state == "succeeded" and len(runs(base)) == 1


def test_a_started_job_records_the_boot_id_and_its_process_start_time(base):
    st = start(base, "job-who", sleep=300)
    job_dir = base / "jobs" / "job-who"
    assert (job_dir / "boot_id").read_text().strip() == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    own = Path(f"/proc/{st.pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert (job_dir / "pid_start").read_text().strip() == own[19]
    job_script(rj.kill_command(str(base), "job-who"))


@pytest.mark.parametrize(
    ("planted", "reason"),
    [
        ({"boot_id": "00000000-0000-0000-0000-000000000000"}, "the edge VM rebooted since the job started"),
        ({"pid_start": "1"}, "now belongs to another process"),
    ],
)
def test_a_pid_that_another_process_holds_after_a_reboot_is_not_the_job(base, planted, reason):
    # A live process that is not the job holds the job's pid, as after a reboot; it must be neither kept nor killed.
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        job_dir = started_long_ago(base, "job-reused")
        (job_dir / "boot_id").write_text(Path("/proc/sys/kernel/random/boot_id").read_text())
        (job_dir / "pid_start").write_text(Path(f"/proc/{other.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        for name, value in planted.items():
            (job_dir / name).write_text(value)
        (job_dir / "pid").write_text(str(other.pid))
        (job_dir / "blob.cs").write_text("AccountKey=secret")

        st = status(base, "job-reused")
        assert st.state == "failed" and st.reason.startswith("lost: ") and reason in st.reason
        out = job_script(rj.kill_command(str(base), "job-reused")).stdout
        assert "not running" in out and alive(other.pid)
        assert not (job_dir / "blob.cs").exists()
        assert "archived failed job" in job_script(rj.archive_failed_command(str(base), "job-reused")).stdout
    finally:
        other.kill()
        other.wait()


def test_cleanup_never_touches_a_running_job(base):
    st = start(base, "job-live", sleep=300)
    job_dir = base / "jobs" / "job-live"
    (job_dir / "blob.cs").write_text("AccountKey=secret")
    (job_dir / "scratch" / "part.csv").write_text("rows")

    out = job_script(rj.cleanup_command(str(base), "job-live")).stdout
    assert "running: left in place" in out
    assert (job_dir / "blob.cs").exists() and (job_dir / "scratch" / "part.csv").exists() and alive(st.pid)

    out = job_script(rj.kill_command(str(base), "job-live")).stdout
    assert f"killed job process group {st.pid}" in out
    assert not alive(st.pid) and not (job_dir / "blob.cs").exists() and not (job_dir / "scratch").exists()
    assert status(base, "job-live").reason == "killed"


def test_stopping_a_job_that_already_succeeded_keeps_its_outputs_and_drops_its_credentials(base):
    start(base, "job-done")
    wait_terminal(base, "job-done")
    job_dir = base / "jobs" / "job-done"
    (job_dir / "blob.cs").write_text("AccountKey=secret")
    out = job_script(rj.kill_command(str(base), "job-done")).stdout
    assert "already ended" in out
    assert (job_dir / "out" / "model.onnx").exists() and not (job_dir / "blob.cs").exists()
    assert status(base, "job-done").state == "succeeded"  # a later try can still fetch the model


def test_a_job_stopped_before_it_has_a_pid_never_trains(base):
    job_dir = base / "jobs" / "job-early"
    (job_dir / ".started").mkdir(parents=True)
    out = job_script(rj.kill_command(str(base), "job-early")).stdout
    assert "no pid yet: marked killed" in out
    st = status(base, "job-early")
    assert (st.state, st.exit_code, st.reason) == ("failed", rj.EXIT_KILLED, "killed")
    # Its launcher, if it still comes round to run, stops before train.py.
    (job_dir / "run.sh").write_text(rj._run_script(CODE, REQ, ["--out", "out"]))
    assert sh(f"bash {str(job_dir / 'run.sh')!r}").returncode == 0
    assert runs(base) == [] and not (job_dir / "train.log").exists()


def test_discard_removes_a_submission_that_never_started_and_nothing_else(base):
    never = base / "jobs" / "job-never"
    never.mkdir(parents=True)
    (never / "blob.cs").write_text("AccountKey=secret")
    assert "never started" in job_script(rj.discard_unstarted_command(str(base), "job-never")).stdout
    assert not never.exists()

    st = start(base, "job-launched", sleep=300)
    assert "left in place" in job_script(rj.discard_unstarted_command(str(base), "job-launched")).stdout
    assert alive(st.pid) and (base / "jobs" / "job-launched" / "pid").exists()
    job_script(rj.kill_command(str(base), "job-launched"))


def test_sweep_removes_only_job_dirs_that_ended_before_the_retention_and_logs_counts(base):
    day = 86400
    old = time.time() - 20 * day

    def finished(job: str, when: float, code: int = 0) -> Path:
        job_dir = base / "jobs" / job
        (job_dir / ".started").mkdir(parents=True)
        (job_dir / "exit_code").write_text(f"{code}\n")
        (job_dir / "train.log").write_text("secret-looking row 1,2,3\n")
        os.utime(job_dir / "exit_code", (when, when))
        return job_dir

    finished("job-old-ok", old)
    finished("job-old-failed", old, code=1)
    finished("job-fresh", time.time() - day)
    archived_old = finished(f"job-x.failed-{int(old)}", old, code=1)
    archived_new = finished(f"job-y.failed-{int(time.time())}", old, code=1)
    never = base / "jobs" / "job-never-started"
    never.mkdir()
    os.utime(never, (old, old))
    running = start(base, "job-running", sleep=300)
    os.utime(base / "jobs" / "job-running" / ".started", (old, old))  # started long ago, still training

    out = job_script(rj.sweep_command(str(base), 14)).stdout.strip()
    assert out == "swept 4 job dirs that ended more than 14 days ago; kept 1 running and 2 recent"
    left = sorted(p.name for p in (base / "jobs").iterdir())
    assert left == sorted(["job-fresh", archived_new.name, "job-running"])
    assert not archived_old.exists() and alive(running.pid)
    assert "row" not in out
    assert job_script(rj.sweep_command(str(base / "nowhere"), 14)).stdout.startswith("swept 0 job dirs")
    job_script(rj.kill_command(str(base), "job-running"))


def test_job_script_commands_are_short_and_quote_their_paths(base):
    for command in (
        rj.kill_command(str(base), "j"),
        rj.cleanup_command(str(base), "j"),
        rj.archive_failed_command(str(base), "j"),
        rj.discard_unstarted_command(str(base), "j"),
        rj.sweep_command(str(base), 14),
    ):
        assert command.startswith("python3 - ") and len(command) < 300 and f"'{base}" in command


def test_status_script_on_stdin_gives_the_same_answer(base):
    start(base, "job-stdin")
    wait_terminal(base, "job-stdin")
    result = sh(rj.status_command(str(base), "job-stdin", script_on_stdin=True), input=rj.JOB_SCRIPT)
    assert rj.parse_status(result.stdout) == status(base, "job-stdin")
    assert len(rj.status_command(str(base), "job-stdin", script_on_stdin=True)) < 200


def test_home_relative_base_dir_is_expanded_on_the_vm(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "edge-training" / "jobs" / "j1" / ".started").mkdir(parents=True)
    (home / "edge-training" / "jobs" / "j1" / "exit_code").write_text("0\n")
    result = subprocess.run(
        ["bash", "-c", rj.status_command("~/edge-training", "j1")],
        capture_output=True, text=True, env={**os.environ, "HOME": str(home)},
    )  # fmt: skip
    assert rj.parse_status(result.stdout).state == "succeeded"
    resolved = subprocess.run(
        ["bash", "-c", rj.resolve_base_command("~/edge-training")],
        capture_output=True, text=True, env={**os.environ, "HOME": str(home)},
    )  # fmt: skip
    assert resolved.stdout.strip() == str((home / "edge-training").resolve())


# -- env and code --------------------------------------------------------------------------------------------


def test_code_marker_commands(base):
    assert sh(rj.code_present_command(str(base), CODE)).stdout.strip() == "missing"
    assert sh(rj.mark_code_complete_command(str(base), CODE)).returncode == 0
    assert sh(rj.code_present_command(str(base), CODE)).stdout.strip() == "present"


def test_prepare_env_builds_once_and_concurrent_runs_wait_for_the_builder(tmp_path):
    base = tmp_path / "base"
    req = tmp_path / "requirements.txt"
    req.write_text("# nothing to install\n")
    command = rj.prepare_env_command(str(base), "r1", str(req), python=sys.executable, pip_args=["--no-index"])
    procs = [subprocess.Popen(["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    built = [out for out, _ in outputs if "training env built" in out]
    assert len(built) == 1, outputs
    assert (base / "envs" / "r1" / ".complete").exists()
    assert (base / "envs" / "r1" / "bin" / "python").exists()

    again = sh(command)
    assert again.returncode == 0 and "cached" in again.stdout


def test_prepare_env_rebuilds_a_half_built_env_and_reports_pip_failures(tmp_path):
    base = tmp_path / "base"
    (base / "envs" / "r2" / "junk").mkdir(parents=True)  # no .complete: an interrupted earlier build
    req = tmp_path / "requirements.txt"
    req.write_text("surely-not-a-package-edge-training==0.0.1\n")
    result = sh(
        rj.prepare_env_command(str(base), "r2", str(req), python=sys.executable, pip_args=["--no-index"]),
        timeout=180,
    )
    assert result.returncode != 0
    assert "surely-not-a-package-edge-training" in result.stderr
    assert not (base / "envs" / "r2" / "junk").exists()
    assert not (base / "envs" / "r2" / ".complete").exists()


# -- parsing and events --------------------------------------------------------------------------------------


def test_parse_status_without_status_line_says_what_to_check():
    with pytest.raises(rj.StatusParseError, match="python3 is on the SSH user's PATH"):
        rj.parse_status("bash: python3: command not found\n")


@pytest.mark.parametrize(
    ("state", "exit_code", "reason", "expected"),
    [
        ("succeeded", 0, "train.py exited with code 0", "success"),
        ("failed", 1, "train.py exited with code 1", "error"),
        ("failed", 2, "train.py exited with code 2", "error"),
        ("failed", 143, "killed", "error"),
        ("failed", None, "lost: the job process is gone", "error"),
    ],
)
def test_status_event_for_every_terminal_state(state, exit_code, reason, expected):
    st = rj.JobStatus(state=state, exit_code=exit_code, reason=reason, log_tail="last line")
    event = rj.status_event("j1", st)
    assert event["status"] == expected and event["job_id"] == "j1" and event["log_tail"] == "last line"
    assert event["exit_code"] == exit_code
    if expected == "error":
        assert reason in event["message"]


def test_status_event_on_timeout_is_an_error_naming_the_last_state():
    event = rj.status_event("j1", rj.JobStatus(state="running", pid=5), timed_out=True)
    assert event["status"] == "error" and event["timed_out"] is True
    assert "timeout" in event["message"] and "running" in event["message"]


# -- blob credentials for the job ----------------------------------------------------------------------------


def test_blob_connection_string_prefers_the_explicit_extra():
    cs = "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=k;BlobEndpoint=http://127.0.0.1:1/a;"
    assert rj.blob_connection_string("x", "y", "https://h", {"connection_string": cs}) == cs


def test_blob_connection_string_from_account_key_keeps_a_stack_hub_endpoint():
    cs = rj.blob_connection_string("acct", "key==", "https://acct.blob.local.azurestack.external/", {})
    assert cs == (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=key==;"
        "BlobEndpoint=https://acct.blob.local.azurestack.external;"
    )
    assert "BlobEndpoint=https://acct.blob.core.windows.net;" in rj.blob_connection_string("acct", "k", None, {})


def test_blob_connection_string_from_sas_and_refusal_without_credentials():
    sas = rj.blob_connection_string(None, None, "https://h/", {"sas_token": "?sv=1&sig=s"})
    assert sas == "BlobEndpoint=https://h;SharedAccessSignature=sv=1&sig=s"
    with pytest.raises(rj.EdgeTrainingError, match="needs its own credentials") as err:
        rj.blob_connection_string(None, "secret-key", None, {"sas_token": "sig"})
    assert "secret-key" not in str(err.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [({"max_depth": 6}, {"max_depth": 6}), ('{"n_estimators": 50}', {"n_estimators": 50}), ("", {}), (None, {})],
)
def test_training_params_arrive_as_a_dict(value, expected):
    assert rj.parse_training_params(value) == expected


# -- what the job gets: a scoped SAS, the validated manifest ----------------------------------------------------

KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def sas_fields(connection_string: str) -> dict[str, str]:
    from urllib.parse import parse_qsl

    settings = dict(part.split("=", 1) for part in connection_string.split(";") if part)
    return {"BlobEndpoint": settings["BlobEndpoint"], **dict(parse_qsl(settings["SharedAccessSignature"]))}


def test_the_vm_gets_a_read_list_sas_of_its_container_until_the_timeout_not_the_key():
    from datetime import datetime, timezone

    full = (f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};"
            "EndpointSuffix=local.azurestack.external")  # fmt: skip
    expiry = datetime(2026, 12, 2, 10, 30, 5, tzinfo=timezone.utc)

    scoped, derived = rj.scoped_blob_connection_string(full, "sensor-readings", expiry)

    assert derived and KEY not in scoped and "AccountKey" not in scoped
    sas = sas_fields(scoped)
    assert sas["BlobEndpoint"] == "https://acct.blob.local.azurestack.external"
    assert (sas["sp"], sas["sr"], sas["se"], sas["spr"]) == ("rl", "c", "2026-12-02T10:30:05Z", "https")
    # That Azure(ite) accepts it for reading and refuses a write: tests/integration/test_train_on_vm.py.


def test_a_connection_that_holds_a_sas_passes_it_through_unchanged():
    from datetime import datetime, timezone

    cs = "BlobEndpoint=https://acct.blob.local.azurestack.external;SharedAccessSignature=sv=2020-08-04&sp=rl&sig=x"
    assert rj.scoped_blob_connection_string(cs, "c", datetime.now(timezone.utc)) == (cs, False)


def test_a_connection_string_without_key_or_sas_is_refused_naming_what_it_has():
    from datetime import datetime, timezone

    with pytest.raises(rj.EdgeTrainingError, match=r"found neither \(settings: accountname, blobendpoint\)"):
        rj.scoped_blob_connection_string("AccountName=a;BlobEndpoint=https://h", "c", datetime.now(timezone.utc))


def test_the_manifest_handed_to_the_job_is_exactly_what_validation_checked():
    blobs = [{"name": "dt=2026-11-01/part-0000.csv", "etag": '"0x1"', "content_md5": None, "size": 10}]
    validation = {"validation_id": "v1", "data_fingerprint": "sha256:ab", "manifest": blobs, "row_count": 3}

    assert rj.training_manifest(validation) == {"validation_id": "v1", "data_fingerprint": "sha256:ab",
                                                "blobs": blobs}  # fmt: skip
    assert rj.training_manifest(json.dumps(validation))["blobs"] == blobs  # as a rendered template hands it over
    assert rj.training_manifest(None) is None and rj.training_manifest({"validation_id": "v0"}) is None
    with pytest.raises(rj.EdgeTrainingError, match="manifest is empty"):
        rj.training_manifest({**validation, "manifest": []})


def test_train_args_name_the_manifest_only_when_the_job_dir_has_one():
    assert "--manifest" not in rj.training_args("c", "2026-11-01", "2026-11-08")
    args = rj.training_args("c", "2026-11-01", "2026-11-08", manifest=True)
    assert args[args.index("--manifest") + 1] == "manifest.json"
