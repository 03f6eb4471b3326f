"""Edge VM health rules, report parsing and blob endpoint resolution (pure logic, no SSH)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.edge_stack import AZURITE_KEY
from edge_training.health import (
    HealthThresholds,
    blob_endpoint_from_connection_string,
    build_health_script,
    evaluate_health,
    parse_health_report,
)

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
NOW = 1_800_000_000.0

LIMITS = HealthThresholds(
    min_free_disk_gb=5,
    min_free_memory_gb=1,
    max_load_per_cpu=2.0,
    min_python=(3, 9),
    max_clock_skew_s=120,
    require_gpu=False,
    require_docker=False,
)


def healthy_report(**changes: object) -> dict:
    report = {
        "hostname": "edge-vm-01",
        "cpus": 4,
        "load1": 1.0,
        "work_dir": "/home/train/edge-training",
        "work_dir_writable": True,
        "work_dir_error": None,
        "free_disk_gb": 50.0,
        "available_memory_gb": 8.0,
        "python_version": "3.11.7",
        "python_executable": "/usr/bin/python3",
        "docker": True,
        "gpu": False,
        "gpu_count": 0,
        "epoch": NOW,
        "blob_endpoint": "https://acct.blob.local.azurestack.external",
        "blob_endpoint_reachable": True,
        "blob_endpoint_status": 400,
        "blob_endpoint_error": None,
    }
    report.update(changes)
    return report


def failed_checks(verdict) -> list[str]:
    return [c.name for c in verdict.checks if c.status == "failed"]


def test_healthy_vm_passes_with_one_line_per_check():
    verdict = evaluate_health(healthy_report(), LIMITS, NOW)

    assert verdict.ok
    assert verdict.failures == [] and verdict.warnings == []
    assert [c.name for c in verdict.checks] == [
        "python", "work_dir", "disk", "memory", "load", "clock_skew", "gpu", "docker", "blob_endpoint",
    ]


@pytest.mark.parametrize(
    ("change", "check", "expected_fragments"),
    [
        (
            {"free_disk_gb": 2.5},
            "disk",
            ["2.50 GB free", "/home/train/edge-training", "minimum 5 GB", "EDGE_VM_MIN_FREE_DISK_GB"],
        ),
        (
            {"available_memory_gb": 0.4},
            "memory",
            ["0.40 GB available", "minimum 1 GB", "EDGE_VM_MIN_FREE_MEMORY_GB"],
        ),
        ({"load1": 9.0}, "load", ["2.25", "load 9.0 over 4 CPUs", "maximum 2", "EDGE_VM_MAX_LOAD_PER_CPU"]),
        ({"python_version": "3.8.10"}, "python", ["Python 3.8.10", ">= 3.9", "install a newer python3"]),
        ({"epoch": NOW + 300}, "clock_skew", ["300.0 s ahead of", "maximum 120 s", "NTP"]),
        ({"epoch": NOW - 300}, "clock_skew", ["300.0 s behind"]),
        (
            {"work_dir_writable": False, "work_dir_error": "PermissionError: denied"},
            "work_dir",
            ["cannot write", "PermissionError"],
        ),
        (
            {
                "blob_endpoint_reachable": False,
                "blob_endpoint_status": None,
                "blob_endpoint_error": "ConnectionRefusedError: [Errno 111]",
            },
            "blob_endpoint",
            [
                "cannot reach the blob endpoint https://acct.blob.local.azurestack.external",
                "ConnectionRefusedError",
                "firewall",
            ],
        ),
    ],
)
def test_each_rule_fails_naming_check_found_value_threshold_and_fix(change, check, expected_fragments):
    verdict = evaluate_health(healthy_report(**change), LIMITS, NOW)

    assert not verdict.ok
    assert failed_checks(verdict) == [check]
    assert len(verdict.failures) == 1
    assert verdict.failures[0].startswith(f"{check}:")
    for fragment in expected_fragments:
        assert fragment in verdict.failures[0]


def test_values_at_the_threshold_pass():
    report = healthy_report(
        free_disk_gb=5.0, available_memory_gb=1.0, load1=8.0, python_version="3.9.0", epoch=NOW - 120
    )

    assert evaluate_health(report, LIMITS, NOW).ok


def test_python_version_compares_numerically_not_as_text():
    assert evaluate_health(healthy_report(python_version="3.10.1"), LIMITS, NOW).ok
    assert not evaluate_health(healthy_report(python_version="3.9.0"), HealthThresholds(min_python=(3, 10)), NOW).ok


def test_every_failure_is_reported_not_just_the_first():
    report = healthy_report(free_disk_gb=0.1, available_memory_gb=0.1, blob_endpoint_reachable=False)

    verdict = evaluate_health(report, LIMITS, NOW)

    assert failed_checks(verdict) == ["disk", "memory", "blob_endpoint"]


def test_gpu_is_optional_unless_required():
    no_gpu = healthy_report(gpu=False, gpu_count=0)

    assert evaluate_health(no_gpu, LIMITS, NOW).ok
    required = HealthThresholds(**{**LIMITS.__dict__, "require_gpu": True})
    verdict = evaluate_health(no_gpu, required, NOW)
    assert failed_checks(verdict) == ["gpu"]
    assert "EDGE_VM_REQUIRE_GPU" in verdict.failures[0]
    assert evaluate_health(healthy_report(gpu=True, gpu_count=2), required, NOW).ok


def test_missing_docker_is_a_warning_only_unless_required():
    verdict = evaluate_health(healthy_report(docker=False), LIMITS, NOW)

    assert verdict.ok
    assert len(verdict.warnings) == 1 and verdict.warnings[0].startswith("docker:")
    required = HealthThresholds(**{**LIMITS.__dict__, "require_docker": True})
    assert failed_checks(evaluate_health(healthy_report(docker=False), required, NOW)) == ["docker"]


def test_missing_python3_fails_with_the_path_searched():
    report = parse_health_report('{"python_missing": true, "hostname": "vm", "path": "/usr/bin:/bin"}\n')

    verdict = evaluate_health(report, LIMITS, NOW)

    assert not verdict.ok
    assert "no python3" in verdict.failures[0] and "/usr/bin:/bin" in verdict.failures[0]


def test_verdict_is_json_ready_for_xcom():
    verdict = evaluate_health(healthy_report(docker=False), LIMITS, NOW)

    assert json.loads(json.dumps(verdict.to_dict()))["warnings"] == verdict.warnings


def test_parse_takes_the_json_line_after_login_noise():
    stdout = "Welcome to the edge VM\n{not json\n" + json.dumps(healthy_report()) + "\n"

    assert parse_health_report(stdout)["hostname"] == "edge-vm-01"


@pytest.mark.parametrize("garbage", ["", "bash: python3: command not found\n", "[1, 2, 3]\n", "{oops\n"])
def test_parse_rejects_output_without_a_report(garbage):
    with pytest.raises(ValueError, match="printed no JSON report"):
        parse_health_report(garbage)


def test_parse_names_missing_fields():
    partial = healthy_report()
    del partial["free_disk_gb"], partial["epoch"]

    with pytest.raises(ValueError, match="lacks free_disk_gb, epoch"):
        parse_health_report(json.dumps(partial))


def test_script_quotes_its_arguments():
    script = build_health_script("http://127.0.0.1:1/acct", "~/dir with 'quote'")

    assert script.startswith("set -- '~/dir with '\"'\"'quote'\"'\"'' http://127.0.0.1:1/acct\n")


def test_script_runs_under_sh_and_reports_an_unreachable_endpoint(tmp_path):
    # The same script the VM runs, run locally: proves the sh/python3 parts fit together and the JSON parses.
    work_dir = tmp_path / "work" / "nested"
    script = build_health_script("http://127.0.0.1:9/devstoreaccount1", str(work_dir))

    result = subprocess.run(["sh", "-s"], input=script.encode(), capture_output=True, timeout=60, check=False,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})

    assert result.returncode == 0, result.stderr.decode()
    report = parse_health_report(result.stdout.decode())
    assert report["work_dir"] == str(work_dir) and work_dir.is_dir() and report["work_dir_writable"]
    assert report["blob_endpoint_reachable"] is False
    assert "Connection" in report["blob_endpoint_error"] or "Errno" in report["blob_endpoint_error"]
    assert report["cpus"] >= 1 and report["free_disk_gb"] > 0 and report["available_memory_gb"] > 0
    verdict = evaluate_health(report, LIMITS, report["epoch"])
    # Other checks depend on the machine running the test (its load, for one); this one does not.
    assert "blob_endpoint" in failed_checks(verdict)


@pytest.mark.parametrize(
    ("connection_string", "endpoint"),
    [
        (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
            "http://127.0.0.1:10000/devstoreaccount1",
        ),
        (
            f"DefaultEndpointsProtocol=https;AccountName=edgedata;AccountKey={AZURITE_KEY};"
            "EndpointSuffix=local.azurestack.external",
            "https://edgedata.blob.local.azurestack.external",
        ),
        (f"AccountName=edgedata;AccountKey={AZURITE_KEY}", "https://edgedata.blob.core.windows.net"),
        ("accountname=edgedata;endpointsuffix=core.chinacloudapi.cn", "https://edgedata.blob.core.chinacloudapi.cn"),
        ("BlobEndpoint=https://edgedata.blob.local.azurestack.external/?sv=2024&sig=secret;SharedAccessSignature=sv=1",
         "https://edgedata.blob.local.azurestack.external"),
        ("UseDevelopmentStorage=true", "http://127.0.0.1:10000/devstoreaccount1"),
    ],
)
def test_blob_endpoint_from_connection_string(connection_string, endpoint):
    assert blob_endpoint_from_connection_string(connection_string) == endpoint


def test_blob_endpoint_error_names_keys_but_never_the_account_key():
    with pytest.raises(ValueError) as err:
        blob_endpoint_from_connection_string(f"DefaultEndpointsProtocol=https;AccountKey={AZURITE_KEY}")

    assert "neither BlobEndpoint nor AccountName" in str(err.value)
    assert "accountkey" in str(err.value)
    assert AZURITE_KEY not in str(err.value)


def test_health_module_imports_no_airflow():
    code = "import sys, edge_training.health; print(any(m.split('.')[0] == 'airflow' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(PLUGINS), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "False"


def test_a_malformed_minimum_python_setting_is_named():
    code = "import edge_training.health"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env={"PYTHONPATH": str(PLUGINS), "PATH": "/usr/bin:/bin", "EDGE_VM_MIN_PYTHON": "three"})
    assert out.returncode != 0
    assert "'three' is not dotted numbers" in out.stderr and "EDGE_VM_MIN_PYTHON" in out.stderr
