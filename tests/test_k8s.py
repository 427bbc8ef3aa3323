"""Kubernetes manifests: schema-valid for a real cluster version, with the fields we promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
MANIFESTS = ["configmap.yaml", "deployment.yaml", "service.yaml", "hpa.yaml"]


def validate(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VALIDATE, "--strict", "-k", "1.30.0", *map(str, files)], capture_output=True, text=True
    )


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_passes_the_kubernetes_schema(name: str) -> None:
    result = validate(K8S / name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout + result.stderr


def test_the_validator_catches_a_broken_manifest(tmp_path: Path) -> None:
    doc = yaml.safe_load((K8S / "deployment.yaml").read_text())
    doc["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = [8000]
    doc["spec"]["replicas"] = "three"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    assert validate(tmp_path / "bad.yaml").returncode != 0


def test_deployment_has_probes_limits_and_a_locked_down_container() -> None:
    spec = yaml.safe_load((K8S / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    (api,) = spec["containers"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert api["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert set(api["resources"]["requests"]) == {"cpu", "memory"} and set(
        api["resources"]["limits"]
    ) == {"cpu", "memory"}
    assert (
        spec["securityContext"]["runAsNonRoot"] is True
        and spec["securityContext"]["runAsUser"] == 10001
    )
    assert api["securityContext"]["readOnlyRootFilesystem"] is True
    assert api["securityContext"]["allowPrivilegeEscalation"] is False
    assert api["envFrom"][0]["configMapRef"]["name"] == "latentserve"
    config = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    assert spec["terminationGracePeriodSeconds"] > int(config["LATENTSERVE_GRACEFUL_TIMEOUT_S"])
    assert all(key.startswith("LATENTSERVE_") for key in config)
    hpa = yaml.safe_load((K8S / "hpa.yaml").read_text())["spec"]
    assert hpa["scaleTargetRef"]["name"] == "latentserve" and hpa["minReplicas"] >= 2


def test_every_configmap_key_is_a_real_setting() -> None:
    from service.config import Settings

    config = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    fields = {f"LATENTSERVE_{name.upper()}" for name in Settings.model_fields}
    assert set(config) <= fields, set(config) - fields
