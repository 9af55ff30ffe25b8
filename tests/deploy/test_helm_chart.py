"""The Helm chart: lint, schema, Kubernetes 1.32 schemas, checkov, and the properties production needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import CHART, CI_VALUES, KEDA_VALUES, KUBERNETES_VERSION, TEMPLATE, Tools, load_cfn

RELEASE = "radstream"
NAMESPACE = "radstream"


def render(tools: Tools, *extra: str | Path) -> str:
    return tools.check("helm", "template", RELEASE, CHART, "--namespace", NAMESPACE, "-f", CI_VALUES, *extra)


def documents(manifest: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.fixture(scope="module")
def manifest(tools: Tools) -> str:
    return render(tools)


@pytest.fixture(scope="module")
def keda_manifest(tools: Tools) -> str:
    return render(tools, "-f", KEDA_VALUES)


@pytest.fixture(scope="module")
def docs(manifest: str) -> list[dict[str, Any]]:
    return documents(manifest)


def test_helm_lint_strict(tools: Tools) -> None:
    tools.check("helm", "lint", "--strict", CHART, "-f", CI_VALUES)
    tools.check("helm", "lint", "--strict", CHART, "-f", CI_VALUES, "-f", KEDA_VALUES)


@pytest.mark.parametrize("variant", ["default", "keda"])
def test_rendered_manifests_validate_against_kubernetes_schemas(
    tools: Tools, manifest: str, keda_manifest: str, variant: str
) -> None:
    text = manifest if variant == "default" else keda_manifest
    out = tools.check("kubernetes-validate", "--strict", "--quiet", "-k", KUBERNETES_VERSION, "-", stdin=text)
    assert "ERROR" not in out


@pytest.mark.parametrize("variant", ["default", "keda"])
def test_checkov_passes_on_rendered_chart(
    tools: Tools, manifest: str, keda_manifest: str, variant: str, tmp_path: Path
) -> None:
    rendered = tmp_path / f"{variant}.yaml"
    rendered.write_text(manifest if variant == "default" else keda_manifest)
    out = tools.check(
        "checkov", "-f", rendered, "--framework", "kubernetes", "--skip-download", "--compact", "-o", "json"
    )
    summary = json.loads(out)["summary"]
    assert summary["failed"] == 0
    assert summary["passed"] > 100
    # Only the documented skips (annotations in the templates): image digest (gateway, worker, DIMSE
    # listener, Triton) and the API-key Secret in the gateway's env.
    assert summary["skipped"] == 5


def test_every_container_is_locked_down(docs: list[dict[str, Any]]) -> None:
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {f"{RELEASE}-gateway", f"{RELEASE}-worker", f"{RELEASE}-triton", f"{RELEASE}-dimse"}
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["runAsUser"] >= 10000, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), (name, bound)
            assert container["readinessProbe"], name
            assert container["livenessProbe"], name
            assert ":latest" not in container["image"], name


def test_gateway_and_worker_share_one_image_with_their_commands(docs: list[dict[str, Any]]) -> None:
    deployments = by_kind(docs, "Deployment")
    gateway = deployments[f"{RELEASE}-gateway"]["spec"]["template"]["spec"]["containers"][0]
    worker = deployments[f"{RELEASE}-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["image"] == worker["image"] == "123456789012.dkr.ecr.us-east-1.amazonaws.com/radstream:0.1.0"
    assert gateway["command"][:7] == [
        "uvicorn",
        "gateway.main:create_app",
        "--factory",
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
    ]
    assert worker["command"] == ["radstream", "worker"]
    listener = deployments[f"{RELEASE}-dimse"]["spec"]["template"]["spec"]["containers"][0]
    assert listener["image"] == gateway["image"] and listener["command"] == ["radstream", "dimse"]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_environment_comes_from_values_and_the_secret(docs: list[dict[str, Any]]) -> None:
    values = yaml.safe_load(CI_VALUES.read_text())
    aws = values["aws"]
    expected = {
        "RADSTREAM_ENVIRONMENT": "production",
        "RADSTREAM_AWS_ENDPOINT_URL": "",
        "RADSTREAM_AWS_REGION": aws["region"],
        "RADSTREAM_IMAGES_BUCKET": aws["imagesBucket"],
        "RADSTREAM_RESULTS_BUCKET": aws["resultsBucket"],
        "RADSTREAM_DATALAKE_BUCKET": aws["datalakeBucket"],
        "RADSTREAM_STATUS_TABLE": aws["statusTable"],
        "RADSTREAM_INFERENCE_QUEUE": aws["inferenceQueue"],
        "RADSTREAM_TELEMETRY_STREAM": aws["telemetryStream"],
        "RADSTREAM_STATE_MACHINE_NAME": aws["stateMachineName"],
        "RADSTREAM_KMS_KEY_ID": aws["kmsKeyId"],
        "RADSTREAM_TRITON_GRPC_URL": f"{RELEASE}-triton:8001",
    }
    deployments = by_kind(docs, "Deployment")
    for component in ("gateway", "worker"):
        env = deployments[f"{RELEASE}-{component}"]["spec"]["template"]["spec"]["containers"][0]["env"]
        plain = {e["name"]: e["value"] for e in env if "value" in e}
        assert {k: plain.get(k) for k in expected} == expected, component
    worker_env = deployments[f"{RELEASE}-worker"]["spec"]["template"]["spec"]["containers"][0]["env"]
    # the worker preprocesses with the model specs the image carries (the Dockerfile puts them there)
    assert {e["name"]: e.get("value") for e in worker_env}["RADSTREAM_MODEL_REPOSITORY"] == (
        "/opt/radstream/triton/models"
    )
    names = [e["name"] for e in worker_env]
    assert len(names) == len(set(names)), "no variable is set twice"
    gateway_env = deployments[f"{RELEASE}-gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]
    (api_keys,) = [e for e in gateway_env if e["name"] == "RADSTREAM_API_KEYS"]
    assert api_keys["valueFrom"]["secretKeyRef"] == {"name": "radstream-api-keys", "key": "api-keys"}
    # the export destinations: the secret's ARN only (the document, with its credentials, stays in it)
    gateway_plain = {e["name"]: e.get("value") for e in gateway_env}
    assert gateway_plain["RADSTREAM_EXPORT_DESTINATIONS_SECRET_ARN"] == aws["exportDestinationsSecretArn"]
    assert "RADSTREAM_EXPORT_DESTINATIONS" not in gateway_plain


def test_triton_runs_on_a_gpu_from_the_s3_model_repository(docs: list[dict[str, Any]]) -> None:
    pod = by_kind(docs, "Deployment")[f"{RELEASE}-triton"]["spec"]["template"]["spec"]
    (triton,) = pod["containers"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-repository=s3://radstream-models-123456789012-us-east-1/models" in triton["args"]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    service = by_kind(docs, "Service")[f"{RELEASE}-triton"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"] == 8001


def test_ingress_is_an_alb_behind_waf(docs: list[dict[str, Any]]) -> None:
    ingress = by_kind(docs, "Ingress")[f"{RELEASE}-gateway"]
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "alb"
    assert annotations["alb.ingress.kubernetes.io/wafv2-acl-arn"].startswith("arn:aws:wafv2:")
    assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip"
    assert "idle_timeout.timeout_seconds=600" in annotations["alb.ingress.kubernetes.io/load-balancer-attributes"]


def test_service_accounts_carry_irsa_roles(docs: list[dict[str, Any]]) -> None:
    accounts = by_kind(docs, "ServiceAccount")
    for component in ("gateway", "worker", "triton"):
        sa = accounts[f"{RELEASE}-{component}"]
        role = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert role == f"arn:aws:iam::123456789012:role/radstream-{component}"
    deployments = by_kind(docs, "Deployment")
    for component in ("gateway", "worker", "triton"):
        pod = deployments[f"{RELEASE}-{component}"]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == f"{RELEASE}-{component}"


def test_service_accounts_are_what_the_irsa_trust_expects_for_any_project_name(tools: Tools) -> None:
    """The stack trusts system:serviceaccount:NAMESPACE:ProjectName-COMPONENT, the release named as ProjectName;
    a name without "radstream" in it (whose other objects are RELEASE-radstream-...) must match as well."""
    trusts = json.dumps(load_cfn(TEMPLATE)["Resources"])
    for release in ("acme", "radstream-prod"):
        rendered = documents(tools.check("helm", "template", release, CHART, "--namespace", NAMESPACE, "-f", CI_VALUES))
        accounts = by_kind(rendered, "ServiceAccount")
        pods = [d["spec"]["template"]["spec"] for d in rendered if d["kind"] == "Deployment"]
        for component in ("gateway", "worker", "triton"):
            assert f"{release}-{component}" in accounts, sorted(accounts)
            assert f"${{ProjectName}}-{component}" in trusts
        # the DIMSE listener writes what the gateway writes, under the gateway's account
        assert sorted(p["serviceAccountName"] for p in pods) == [
            f"{release}-{c}" for c in ("gateway", "gateway", "triton", "worker")
        ]


def test_network_policies_open_only_the_needed_paths(docs: list[dict[str, Any]]) -> None:
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies[f"{RELEASE}-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny
    assert "egress" not in deny
    gateway_from = policies[f"{RELEASE}-gateway"]["spec"]["ingress"][0]["from"]
    assert all("ipBlock" in peer for peer in gateway_from)
    assert "ingress" not in policies[f"{RELEASE}-worker"]["spec"]
    (dicom,) = policies[f"{RELEASE}-dimse"]["spec"]["ingress"]
    assert dicom["from"] == [{"ipBlock": {"cidr": "10.0.5.0/24"}}]
    assert dicom["ports"] == [{"port": "dicom", "protocol": "TCP"}]
    listener = by_kind(docs, "Service")[f"{RELEASE}-dimse"]
    assert listener["spec"]["type"] == "LoadBalancer" and listener["spec"]["loadBalancerSourceRanges"] == [
        "10.0.5.0/24"
    ]
    annotations = listener["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-scheme"] == "internal"
    triton_ingress = policies[f"{RELEASE}-triton"]["spec"]["ingress"]
    grpc_rule = triton_ingress[0]
    assert grpc_rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "radstream",
                    "app.kubernetes.io/instance": RELEASE,
                    "app.kubernetes.io/component": "worker",
                }
            }
        }
    ]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]


def test_autoscaling_and_disruption_budgets(docs: list[dict[str, Any]], keda_manifest: str) -> None:
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == {f"{RELEASE}-gateway"}
    pdbs = by_kind(docs, "PodDisruptionBudget")
    assert set(pdbs) == {f"{RELEASE}-gateway", f"{RELEASE}-worker", f"{RELEASE}-triton"}
    keda = documents(keda_manifest)
    scaled = by_kind(keda, "ScaledObject")
    assert set(scaled) == {f"{RELEASE}-worker", f"{RELEASE}-triton"}
    for name, obj in scaled.items():
        assert obj["spec"]["scaleTargetRef"]["name"] == name
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["type"] == "aws-sqs-queue"
        assert trigger["metadata"]["queueURL"].endswith("/radstream-inference")
    # KEDA owns the replica counts of what it scales
    for name in scaled:
        assert "replicas" not in by_kind(keda, "Deployment")[name]["spec"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("containerSecurityContext.readOnlyRootFilesystem=false", "readOnlyRootFilesystem"),
        ("containerSecurityContext.runAsNonRoot=false", "runAsNonRoot"),
        ("triton.modelRepository=/models", "modelRepository"),
        ("image.digest=sha256:short", "digest"),
        ("unknownKey=1", "unknownKey"),
    ],
)
def test_schema_rejects_unsafe_values(tools: Tools, override: str, message: str) -> None:
    result = tools.run("helm", "template", RELEASE, CHART, "-f", CI_VALUES, "--set", override)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    "override",
    [
        "apiKeys.existingSecret=",
        "aws.imagesBucket=",
        "ingress.wafAclArn=",
        "networkPolicy.ingressCidrs=null",
        "networkPolicy.ingressCidrs={}",  # empty: a peer-less "from" would admit every source
        "dimse.peers=",
        "dimse.sourceCidrs={}",  # empty: the NLB and the policy would admit every source
    ],
)
def test_required_values_are_required(tools: Tools, override: str) -> None:
    flag = "--set-json" if override.endswith("={}") else "--set"
    if flag == "--set-json":
        override = override.replace("={}", "=[]")
    result = tools.run("helm", "template", RELEASE, CHART, "-f", CI_VALUES, flag, override)
    assert result.returncode != 0, override
    assert "required" in result.stderr or "schema" in result.stderr


def test_every_stack_output_meant_for_helm_names_a_chart_value() -> None:
    outputs = load_cfn(TEMPLATE)["Outputs"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    targets = [
        o["Description"].removeprefix("Helm: ").split()[0]
        for o in outputs.values()
        if o.get("Description", "").startswith("Helm: ")
    ]
    assert len(targets) >= 13
    for target in targets:
        node = values
        for part in target.split("."):
            assert isinstance(node, dict), target
            assert part in node, target
            node = node[part]
