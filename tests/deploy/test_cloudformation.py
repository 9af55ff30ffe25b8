"""The CloudFormation templates: cfn-lint, checkov, and the properties the pipeline relies on."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.resources import (
    INFERENCE_QUEUE_MAX_RECEIVES,
    INFERENCE_VISIBILITY_TIMEOUT_S,
    LAMBDA_FUNCTIONS,
    MANIFEST_INPUT_PATHS,
    MANIFEST_INPUT_TEMPLATE,
    STATE_MACHINE_FILE,
    STATUS_TABLE_ATTRIBUTES,
    STATUS_TABLE_KEY_SCHEMA,
    TELEMETRY_ERROR_PREFIX,
    TELEMETRY_PREFIX,
    TELEMETRY_SHARDS,
    ResourceNames,
    manifest_event_pattern,
)
from radstream.settings import Settings
from radstream.telemetry import TelemetryEvent
from tests.deploy.conftest import BOOTSTRAP, ROOT, STATEMACHINES, TEMPLATE, Tools, load_cfn

LAMBDA_MODEL_REPOSITORY = "/opt/radstream/triton/models"  # where the Dockerfile puts the model specs

# Every inline checkov skip, by resource, with the reason written next to it in the template.
EXPECTED_SKIPS = {
    ("CKV_AWS_18", "AWS::S3::Bucket.LogBucket"),
    ("CKV_AWS_117", "AWS::Lambda::Function.ValidateMetadataFunction"),
    ("CKV_AWS_117", "AWS::Lambda::Function.PrepareTensorsFunction"),
    ("CKV_AWS_117", "AWS::Lambda::Function.StoreResultsFunction"),
    ("CKV_AWS_117", "AWS::Lambda::Function.MarkFailedFunction"),
    ("CKV_AWS_117", "AWS::Lambda::Function.ReconcileFunction"),
    ("CKV_AWS_117", "AWS::Lambda::Function.StartPipelineFunction"),
    ("CKV_AWS_117", "AWS::Lambda::Function.ExportFunction"),
    ("CKV_AWS_111", "AWS::IAM::Role.WorkerRole"),
    ("CKV_AWS_18", "AWS::S3::Bucket.ArtifactsBucket"),
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_cfn(TEMPLATE)


def resources_of(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def functions_by_suffix(template: dict[str, Any]) -> dict[str, str]:
    """infra.resources LAMBDA_FUNCTIONS suffix -> logical id of the function named ${ProjectName}-suffix."""
    found = {}
    for name, function in resources_of(template, "AWS::Lambda::Function").items():
        function_name = function["Properties"]["FunctionName"]["Fn::Sub"]
        assert function_name.startswith("${ProjectName}-"), name
        found[function_name.removeprefix("${ProjectName}-")] = name
    return found


def statements(template: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    """Inline policy statements of a role, by Sid."""
    found = {}
    for policy in template["Resources"][role]["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow", (role, statement)
            found[statement["Sid"]] = statement
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def s3_grants(template: dict[str, Any], role: str) -> set[tuple[str, str]]:
    """(action, resource) pairs of a role's S3 statements; resources written as BucketLogicalId/prefix."""
    grants = set()
    for statement in statements(template, role).values():
        for action in as_list(statement["Action"]):
            if not action.startswith("s3:"):
                continue
            for resource in as_list(statement["Resource"]):
                if "Fn::Sub" in resource:
                    match = re.fullmatch(r"\$\{([A-Za-z]+)\.Arn\}/(.*)", resource["Fn::Sub"])
                    assert match, (role, resource)
                    grants.add((action, f"{match[1]}/{match[2]}"))
                else:
                    assert resource["Fn::GetAtt"][1] == "Arn", (role, resource)
                    grants.add((action, resource["Fn::GetAtt"][0]))
    return grants


def test_cfn_lint_is_clean(tools: Tools) -> None:
    tools.check("cfn-lint", TEMPLATE, BOOTSTRAP)


def test_checkov_passes_with_only_the_documented_skips(tools: Tools) -> None:
    out = tools.check(
        "checkov",
        "-f",
        TEMPLATE,
        "-f",
        BOOTSTRAP,
        "--framework",
        "cloudformation",
        "--skip-download",
        "--compact",
        "-o",
        "json",
    )
    results = json.loads(out)["results"]
    assert results["failed_checks"] == []
    assert len(results["passed_checks"]) > 200
    skipped = {(c["check_id"], c["resource"]) for c in results["skipped_checks"]}
    assert skipped == EXPECTED_SKIPS
    assert all(c["check_result"].get("suppress_comment") for c in results["skipped_checks"])


def test_buckets_are_private_encrypted_versioned_logged_and_tls_only(template: dict[str, Any]) -> None:
    buckets = resources_of(template, "AWS::S3::Bucket")
    assert {"ImagesBucket", "ResultsBucket", "DatalakeBucket", "ModelsBucket", "LogBucket"} <= set(buckets)
    policies = {p["Properties"]["Bucket"]["Ref"]: p for p in resources_of(template, "AWS::S3::BucketPolicy").values()}
    for name, bucket in buckets.items():
        props = bucket["Properties"]
        assert all(props["PublicAccessBlockConfiguration"].values()), name
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}, name
        assert props["LifecycleConfiguration"]["Rules"], name
        sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        if name == "LogBucket":
            assert sse == {"SSEAlgorithm": "AES256"}  # S3 server access logging requires SSE-S3
        else:
            assert sse == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": {"Fn::GetAtt": ["DataKey", "Arn"]}}, name
            assert props["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": "LogBucket"}, name
        (deny,) = [
            s
            for s in policies[name]["Properties"]["PolicyDocument"]["Statement"]
            if s.get("Sid") == "DenyInsecureTransport"
        ]
        assert deny["Effect"] == "Deny"
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    images = buckets["ImagesBucket"]["Properties"]
    assert images["NotificationConfiguration"] == {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}


def eventbridge_input(transformer: dict[str, Any], values: dict[str, str]) -> Any:
    """What EventBridge sends: a placeholder in quotes takes the raw string, a bare one its JSON value."""
    text = transformer["InputTemplate"]
    for name, value in values.items():
        text = text.replace(f'"<{name}>"', json.dumps(value)).replace(f"<{name}>", json.dumps(value))
    return json.loads(text)


def test_manifest_rule_invokes_the_start_pipeline_function_as_infra_resources_says(
    template: dict[str, Any],
) -> None:
    rule = template["Resources"]["ManifestCreatedRule"]["Properties"]
    # the bucket is a !Ref in the template and a name in the local stack: the structure is the same
    assert rule["EventPattern"] == manifest_event_pattern({"Ref": "ImagesBucket"})  # type: ignore[arg-type]
    (target,) = rule["Targets"]
    starter = functions_by_suffix(template)["start-pipeline"]
    assert target["Arn"] == {"Fn::GetAtt": [starter, "Arn"]}
    assert "RoleArn" not in target  # a Lambda target is authorised by the function's resource policy
    assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["PipelineEventsDeadLetterQueue", "Arn"]}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0
    transformer = target["InputTransformer"]
    assert transformer["InputPathsMap"] == MANIFEST_INPUT_PATHS
    assert transformer["InputTemplate"] == MANIFEST_INPUT_TEMPLATE
    assert eventbridge_input(transformer, {"bucket": "b", "key": "manifests/k.json"}) == {
        "bucket": "b",
        "key": "manifests/k.json",
    }
    # nothing but StartPipeline starts executions: no rule targets the state machine directly
    for name, other in resources_of(template, "AWS::Events::Rule").items():
        for each in other["Properties"]["Targets"]:
            assert each["Arn"] != {"Ref": "Pipeline"}, name
    (permission,) = resources_of(template, "AWS::Lambda::Permission").values()
    assert permission["Properties"] == {
        "FunctionName": {"Fn::GetAtt": [starter, "Arn"]},
        "Action": "lambda:InvokeFunction",
        "Principal": "events.amazonaws.com",
        "SourceArn": {"Fn::GetAtt": ["ManifestCreatedRule", "Arn"]},
        "SourceAccount": {"Ref": "AWS::AccountId"},
    }
    dlq_policy = template["Resources"]["PipelineEventsDeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]
    (from_rule,) = [s for s in dlq_policy["Statement"] if s.get("Sid") == "EventBridgeDeadLetters"]
    assert from_rule["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["ManifestCreatedRule", "Arn"]}}}


def test_start_pipeline_may_ask_for_and_start_runs_and_nothing_else(template: dict[str, Any]) -> None:
    starter = template["Resources"][functions_by_suffix(template)["start-pipeline"]]["Properties"]
    role = starter["Role"]["Fn::GetAtt"][0]
    granted = statements(template, role)
    assert "ManagedPolicyArns" not in template["Resources"][role]["Properties"]
    actions = {a for s in granted.values() for a in as_list(s["Action"])}
    assert actions == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "states:StartExecution",
        "states:ListStateMachines",
        "dynamodb:UpdateItem",  # asks for a run and claims it (worker/stages/runs.py)
        "dynamodb:GetItem",
        "s3:GetObject",  # what the last run covered (a duplicate event asks for nothing)
        "s3:ListBucket",
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "sqs:SendMessage",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
    }
    assert s3_grants(template, role) == {("s3:GetObject", "ImagesBucket/work/*"), ("s3:ListBucket", "ImagesBucket")}
    assert granted["StartNamedExecution"]["Resource"] == {"Ref": "Pipeline"}
    assert granted["DeadLetters"]["Resource"] == {"Fn::GetAtt": ["PipelineEventsDeadLetterQueue", "Arn"]}
    # failed asynchronous invocations end in the same queue as undeliverable events
    assert starter["DeadLetterConfig"]["TargetArn"] == {"Fn::GetAtt": ["PipelineEventsDeadLetterQueue", "Arn"]}
    assert (
        starter["Environment"]["Variables"]["RADSTREAM_STATE_MACHINE_NAME"]
        == (template["Resources"]["Pipeline"]["Properties"]["StateMachineName"])
    )


def test_state_machine_substitutions_cover_the_asl_placeholders(template: dict[str, Any]) -> None:
    machine = template["Resources"]["Pipeline"]["Properties"]
    asl = (TEMPLATE.parent / machine["DefinitionS3Location"]).resolve()
    assert asl in STATEMACHINES
    assert asl == STATE_MACHINE_FILE
    placeholders = set(re.findall(r"\$\{([A-Za-z0-9]+)\}", asl.read_text()))
    assert placeholders == set(machine["DefinitionSubstitutions"])
    # every stage function's ARN is substituted where infra/resources.py says, the queue URL is the queue's
    functions = functions_by_suffix(template)
    stage_arns = {
        substitution: {"Fn::GetAtt": [functions[suffix], "Arn"]}
        for suffix, (_handler, substitution) in LAMBDA_FUNCTIONS.items()
        if substitution is not None
    }
    assert machine["DefinitionSubstitutions"] == {**stage_arns, "InferenceQueueUrl": {"Ref": "InferenceQueue"}}
    # the state machine's role invokes exactly those functions (and their versions and aliases)
    invoke = statements(template, machine["RoleArn"]["Fn::GetAtt"][0])["InvokeStages"]
    assert invoke["Action"] == "lambda:InvokeFunction"
    invoked = {r["Fn::GetAtt"][0] for r in invoke["Resource"] if "Fn::GetAtt" in r}
    assert invoked == {arn["Fn::GetAtt"][0] for arn in stage_arns.values()}
    send = statements(template, machine["RoleArn"]["Fn::GetAtt"][0])["SendInferenceTask"]
    assert send["Action"] == "sqs:SendMessage"
    assert send["Resource"] == {"Fn::GetAtt": ["InferenceQueue", "Arn"]}
    assert machine["TracingConfiguration"] == {"Enabled": True}
    assert machine["LoggingConfiguration"]["Level"] != "OFF"


def test_lambda_functions_run_the_pipeline_handlers(template: dict[str, Any]) -> None:
    functions = resources_of(template, "AWS::Lambda::Function")
    handlers = {f["Properties"]["ImageConfig"]["Command"][0] for f in functions.values()}
    assert handlers == {handler for handler, _substitution in LAMBDA_FUNCTIONS.values()}
    by_suffix = functions_by_suffix(template)
    assert set(by_suffix) == set(LAMBDA_FUNCTIONS)
    for suffix, (handler, _substitution) in LAMBDA_FUNCTIONS.items():
        assert functions[by_suffix[suffix]]["Properties"]["ImageConfig"]["Command"] == [handler], suffix
    settings_fields = {f"RADSTREAM_{name.upper()}" for name in Settings.model_fields}
    roles = set()
    for name, function in functions.items():
        props = function["Properties"]
        env = props["Environment"]["Variables"]
        assert set(env) <= settings_fields, name
        assert env["RADSTREAM_ENVIRONMENT"] == "production"
        assert env["RADSTREAM_AWS_ENDPOINT_URL"] == ""
        assert env["RADSTREAM_MODEL_REPOSITORY"] == LAMBDA_MODEL_REPOSITORY, name
        assert env["RADSTREAM_IMAGES_BUCKET"] == {"Ref": "ImagesBucket"}, name
        assert env["RADSTREAM_RESULTS_BUCKET"] == {"Ref": "ResultsBucket"}, name
        assert env["RADSTREAM_STATUS_TABLE"] == {"Ref": "StatusTable"}, name
        assert env["RADSTREAM_TELEMETRY_STREAM"] == {"Ref": "TelemetryStream"}, name
        assert env["RADSTREAM_INFERENCE_QUEUE"] == {"Fn::GetAtt": ["InferenceQueue", "QueueName"]}, name
        assert env["RADSTREAM_KMS_KEY_ID"] == {"Fn::GetAtt": ["DataKey", "Arn"]}, name
        assert props["DeadLetterConfig"]["TargetArn"], name
        assert props["TracingConfig"] == {"Mode": "Active"}, name
        assert props["ReservedConcurrentExecutions"] > 0, name
        roles.add(props["Role"]["Fn::GetAtt"][0])
    assert len(roles) == len(functions)  # one least-privilege role each


# What each stage's code in worker/stages/ calls, on the key prefixes of radstream/keys.py. A stage that
# starts touching another prefix or service fails here until its role says so (and the other way round).
STAGE_S3 = {
    "validate-metadata": {
        ("s3:GetObject", "ImagesBucket/manifests/*"),
        ("s3:GetObject", "ImagesBucket/outputs/*"),  # what earlier runs inferred
        ("s3:PutObject", "ImagesBucket/work/*"),  # the run's plan
        ("s3:ListBucket", "ImagesBucket"),  # a withdrawn manifest must answer 404 (skipped), not 403
    },
    "prepare-tensors": {
        ("s3:GetObject", "ImagesBucket/work/*"),  # the plan
        ("s3:GetObject", "ImagesBucket/instances/*"),
        ("s3:PutObject", "ImagesBucket/work/*"),
        ("s3:ListBucket", "ImagesBucket"),  # a missing instance must answer 404 (InstanceMissing), not 403
    },
    "store-results": {
        ("s3:GetObject", "ImagesBucket/work/*"),  # the plan, and why an instance has no result
        ("s3:GetObject", "ImagesBucket/outputs/*"),  # the outputs of every run
        ("s3:ListBucket", "ImagesBucket"),
        ("s3:PutObject", "ResultsBucket/results/*"),
    },
    "mark-failed": set(),
}
STAGE_S3["export"] = {
    ("s3:GetObject", "ResultsBucket/results/*"),  # result.json and the SR and SEG it names
    ("s3:ListBucket", "ResultsBucket"),  # results not there answer 404, not 403
}
STAGES_WRITING_STATUS = {"validate-metadata", "store-results", "mark-failed", "export"}
# Stages that read a secret: export reads the destinations document (never from its environment).
STAGE_SECRETS = {"export": "ExportDestinationsSecret"}
# Stages that end a run: they read its row and start the follow-up run (worker/stages/runs.py).
STAGES_ENDING_RUNS = {"store-results", "mark-failed"}
RUN_ENDING = {"dynamodb:GetItem", "states:StartExecution", "states:ListStateMachines"}


def test_each_stage_role_grants_what_its_code_does(template: dict[str, Any]) -> None:
    functions = functions_by_suffix(template)
    assert set(STAGE_S3) == {s for s, (_h, substitution) in LAMBDA_FUNCTIONS.items() if substitution is not None}
    common = template["Resources"]["PipelineFunctionsCommonPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    (telemetry,) = [s for s in common if s["Sid"] == "Telemetry"]
    assert telemetry["Action"] == "kinesis:PutRecords"  # radstream/telemetry.py
    assert telemetry["Resource"] == {"Fn::GetAtt": ["TelemetryStream", "Arn"]}
    for suffix, expected in STAGE_S3.items():
        props = template["Resources"][functions[suffix]]["Properties"]
        role = props["Role"]["Fn::GetAtt"][0]
        managed = template["Resources"][role]["Properties"]["ManagedPolicyArns"]
        assert managed[0] == {"Ref": "PipelineFunctionsCommonPolicy"}, suffix
        # the export function alone runs in a VPC (to reach a PACS on the hospital network), when one is given
        assert managed[1:] == ([] if suffix != "export" else [managed[1]]), suffix
        if suffix == "export":
            assert managed[1]["Fn::If"][0] == "HasExportVpc"
            assert "AWSLambdaVPCAccessExecutionRole" in managed[1]["Fn::If"][1]["Fn::Sub"]
        assert s3_grants(template, role) == expected, suffix
        granted = statements(template, role)
        actions = {a for s in granted.values() for a in as_list(s["Action"])}
        assert actions - {"logs:CreateLogStream", "logs:PutLogEvents"} == (
            {action for action, _resource in expected}
            | ({"dynamodb:UpdateItem"} if suffix in STAGES_WRITING_STATUS else set())
            | (RUN_ENDING if suffix in STAGES_ENDING_RUNS else set())
            | ({"secretsmanager:GetSecretValue"} if suffix in STAGE_SECRETS else set())
        ), suffix
        if suffix in STAGE_SECRETS:
            assert granted["ReadDestinations"]["Resource"] == {"Ref": STAGE_SECRETS[suffix]}
        if suffix in STAGES_ENDING_RUNS:  # built from the name: the machine names these functions
            assert granted["StartFollowUpRuns"]["Resource"] == {
                "Fn::Sub": "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:${ProjectName}-pipeline"
            }
        if suffix in STAGES_WRITING_STATUS:
            assert granted["Status"]["Resource"] == {"Fn::GetAtt": ["StatusTable", "Arn"]}, suffix
        for statement in granted.values():
            if statement["Action"] == "s3:ListBucket":
                prefixes = statement["Condition"]["StringLikeIfExists"]["s3:prefix"]
                readable = {r.split("/", 1)[1] for a, r in expected if a == "s3:GetObject"}
                assert set(prefixes) <= readable, suffix
        assert props["DeadLetterConfig"]["TargetArn"] == {"Fn::GetAtt": ["LambdaDeadLetterQueue", "Arn"]}


def test_eks_roles_grant_what_the_gateway_and_worker_do(template: dict[str, Any]) -> None:
    assert s3_grants(template, "GatewayRole") == {
        (action, f"ImagesBucket/{prefix}/*")
        for action in ("s3:PutObject", "s3:GetObject")  # no DeleteObject: nothing the gateway stores is removed
        for prefix in ("instances", "manifests")
    } | {
        # the DIMSE listener (same role): its open-association records, the only objects it removes
        (action, "ImagesBucket/dimse/open/*")
        for action in ("s3:PutObject", "s3:GetObject", "s3:DeleteObject")
    } | {
        ("s3:ListBucket", "ImagesBucket"),  # listing a study; HeadBucket for /readyz
        ("s3:GetObject", "ResultsBucket/results/*"),
        ("s3:ListBucket", "ResultsBucket"),  # a missing result answers 404, not 403
    }
    gateway = statements(template, "GatewayRole")
    assert set(as_list(gateway["StudyStatus"]["Action"])) == {
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "dynamodb:PutItem",  # with DeleteItem: a failed request's status row is put back as it was
        "dynamodb:DeleteItem",
    }
    assert gateway["Telemetry"]["Action"] == "kinesis:PutRecords"
    # a re-export (POST /v1/studies/{study}/exports) starts an execution of the pipeline; nothing else
    assert {a for s in gateway.values() for a in as_list(s["Action"]) if a.startswith("states:")} == {
        "states:StartExecution",
        "states:ListStateMachines",
    }
    assert gateway["StartExports"]["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:${ProjectName}-pipeline"
    }
    assert gateway["ReadExportDestinations"]["Resource"] == {"Ref": "ExportDestinationsSecret"}
    assert s3_grants(template, "WorkerRole") == {
        ("s3:GetObject", "ImagesBucket/work/*"),
        ("s3:ListBucket", "ImagesBucket"),  # a missing tensor answers 404, not 403
        ("s3:PutObject", "ImagesBucket/outputs/*"),  # kept as long as the instances: not under work/
    }
    worker = statements(template, "WorkerRole")
    assert set(as_list(worker["ConsumeInferenceQueue"]["Action"])) >= {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
    }
    assert worker["ConsumeInferenceQueue"]["Resource"] == {"Fn::GetAtt": ["InferenceQueue", "Arn"]}
    assert set(worker["AnswerTaskTokens"]["Action"]) == {
        "states:SendTaskSuccess",
        "states:SendTaskFailure",
        "states:SendTaskHeartbeat",
    }
    assert worker["Telemetry"]["Action"] == "kinesis:PutRecords"


def test_pipeline_work_files_expire(template: dict[str, Any]) -> None:
    rules = template["Resources"]["ImagesBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    (work,) = [r for r in rules if r.get("Prefix") == "work/"]
    assert work["Status"] == "Enabled"
    assert 1 <= work["ExpirationInDays"] <= 30
    assert work["NoncurrentVersionExpiration"]["NoncurrentDays"] <= 7
    # nothing else in the images bucket expires: instances and manifests are the archive
    assert all("ExpirationInDays" not in r for r in rules if r is not work)


def test_resource_names_match_the_local_stack(template: dict[str, Any]) -> None:
    """With the default ProjectName the stack's names are the settings' defaults the code uses."""
    project = template["Parameters"]["ProjectName"]["Default"]
    names = ResourceNames.from_settings(Settings.model_construct())  # the defaults, not this environment
    assert names.lambda_prefix == project

    def named(logical_id: str, prop: str) -> str:
        value: str = template["Resources"][logical_id]["Properties"][prop]["Fn::Sub"]
        return value.replace("${ProjectName}", project)

    assert named("InferenceQueue", "QueueName") == names.inference_queue
    assert named("InferenceDeadLetterQueue", "QueueName") == names.inference_dlq
    assert named("PipelineEventsDeadLetterQueue", "QueueName") == names.trigger_dlq
    assert named("StatusTable", "TableName") == names.status_table
    assert named("TelemetryStream", "Name") == names.telemetry_stream
    assert named("Pipeline", "StateMachineName") == names.state_machine
    for suffix, logical_id in functions_by_suffix(template).items():
        assert named(logical_id, "FunctionName") == names.function_name(suffix)


def test_queues_match_the_local_stack_and_are_encrypted(template: dict[str, Any]) -> None:
    queue = template["Resources"]["InferenceQueue"]["Properties"]
    assert queue["RedrivePolicy"]["maxReceiveCount"] == INFERENCE_QUEUE_MAX_RECEIVES
    assert queue["VisibilityTimeout"] == INFERENCE_VISIBILITY_TIMEOUT_S
    for name, q in resources_of(template, "AWS::SQS::Queue").items():
        assert q["Properties"]["KmsMasterKeyId"] == {"Ref": "DataKey"}, name


def test_status_table_matches_the_local_stack(template: dict[str, Any]) -> None:
    table = template["Resources"]["StatusTable"]["Properties"]
    assert table["KeySchema"] == STATUS_TABLE_KEY_SCHEMA
    assert table["AttributeDefinitions"] == STATUS_TABLE_ATTRIBUTES
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"]["SSEType"] == "KMS"


def test_telemetry_lands_partitioned_and_is_queryable(template: dict[str, Any]) -> None:
    s3 = template["Resources"]["TelemetryDelivery"]["Properties"]["ExtendedS3DestinationConfiguration"]
    assert s3["Prefix"] == TELEMETRY_PREFIX
    assert s3["ErrorOutputPrefix"] == TELEMETRY_ERROR_PREFIX
    firehose = statements(template, "FirehoseRole")["WriteDatalake"]["Resource"]
    for prefix in (TELEMETRY_PREFIX, TELEMETRY_ERROR_PREFIX):
        assert {"Fn::Sub": "${DatalakeBucket.Arn}/" + prefix.split("/")[0] + "/*"} in firehose
    table = template["Resources"]["TelemetryTable"]["Properties"]["TableInput"]
    columns = {c["Name"]: c["Type"] for c in table["StorageDescriptor"]["Columns"]}
    # one column per field of the event model the producers send
    assert set(columns) == set(TelemetryEvent.model_fields)
    assert columns == {
        "schema_version": "string",
        "event_id": "string",
        "ts": "timestamp",
        "stage": "string",
        "tenant": "string",
        "study_uid": "string",
        "duration_ms": "double",
        "batch_size": "int",
        "queue_wait_ms": "double",
        "model": "string",
        "outcome": "string",
        "reason": "string",
        "instances": "int",
        "destination": "string",
    }
    assert [p["Name"] for p in table["PartitionKeys"]] == ["year", "month", "day"]
    assert table["Parameters"]["projection.enabled"] == "true"
    stream = template["Resources"]["TelemetryStream"]["Properties"]
    assert stream["ShardCount"] == TELEMETRY_SHARDS
    assert stream["StreamEncryption"]["EncryptionType"] == "KMS"
    workgroup = template["Resources"]["AnalyticsWorkGroup"]["Properties"]["WorkGroupConfiguration"]
    assert workgroup["ResultConfiguration"]["EncryptionConfiguration"]["EncryptionOption"] == "SSE_KMS"


def test_irsa_roles_trust_one_service_account_each(template: dict[str, Any]) -> None:
    for role, account in [
        ("GatewayRole", "${KubernetesNamespace}:${ProjectName}-gateway"),
        ("WorkerRole", "${KubernetesNamespace}:${ProjectName}-worker"),
        ("TritonRole", "${KubernetesNamespace}:${ProjectName}-triton"),
        ("KedaOperatorRole", "${KedaNamespace}:keda-operator"),
    ]:
        document = template["Resources"][role]["Properties"]["AssumeRolePolicyDocument"]["Fn::Sub"]
        # the JSON stays valid once CloudFormation substitutes the parameters
        policy = json.loads(re.sub(r"\$\{[A-Za-z:]+\}", "x", document))
        (statement,) = policy["Statement"]
        assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
        assert f"system:serviceaccount:{account}" in document
        assert set(statement["Condition"]["StringEquals"]) == {"x:sub", "x:aud"}


# AWS WAF inspects only the first 8 KB of a body behind an ALB, so the upload limit is enforced on the
# declared Content-Length: the regex must match exactly the numbers above max_upload_bytes.
@pytest.mark.parametrize(
    ("length", "blocked"),
    [
        (0, False),
        (8192, False),
        (4 * 1024**3 - 1, False),
        (4 * 1024**3, False),
        (4 * 1024**3 + 1, True),
        (4294967299, True),
        (4294967300, True),
        (4300000000, True),
        (4999999999, True),
        (5 * 10**9, True),
        (9999999999, True),
        (10**10, True),
        (10**15, True),
        (999999999, False),
        (3999999999, False),
        (4294967196, False),
        (4294966296, False),
        (4294867296, False),
        (4293967296, False),
    ],
)
def test_waf_content_length_regex_matches_numbers_above_the_upload_limit(
    template: dict[str, Any], length: int, blocked: bool
) -> None:
    assert Settings.model_fields["max_upload_bytes"].default == 4 * 1024**3
    (regex,) = template["Resources"]["ContentLengthAboveUploadLimit"]["Properties"]["RegularExpressionList"]
    assert bool(re.fullmatch(regex, str(length))) is blocked


def test_web_acl_has_managed_rate_and_size_rules(template: dict[str, Any]) -> None:
    rules = {r["Name"]: r for r in template["Resources"]["WebAcl"]["Properties"]["Rules"]}
    assert {
        "AWSManagedRulesCommonRuleSet",
        "AWSManagedRulesKnownBadInputsRuleSet",
        "RateLimitPerIp",
        "DeclaredBodyTooLarge",
        "OversizedBodyOutsideStow",
    } <= set(rules)
    common = rules["AWSManagedRulesCommonRuleSet"]["Statement"]["ManagedRuleGroupStatement"]
    overrides = {o["Name"]: o["ActionToUse"] for o in common["RuleActionOverrides"]}
    assert overrides == {"SizeRestrictions_BODY": {"Count": {}}}


def test_audit_and_threat_detection(template: dict[str, Any]) -> None:
    trail = template["Resources"]["Trail"]["Properties"]
    assert trail["EnableLogFileValidation"] is True
    assert trail["IsMultiRegionTrail"] is True
    assert template["Resources"]["Detector"]["Properties"]["Enable"] is True


def test_every_file_the_templates_reference_exists() -> None:
    for path in (TEMPLATE, BOOTSTRAP, *STATEMACHINES):
        assert Path(path).is_file()
    assert (ROOT / "docs" / "deploy.md").is_file()


def test_each_lambda_state_outlasts_its_function(template: dict[str, Any]) -> None:
    """A Task state that timed out at the same moment as its Lambda could send the study to MarkFailed
    (status failed) while the function still ran on and wrote `completed`. Each state's TimeoutSeconds is
    longer than its function's Timeout, so the function's own timeout is what the state sees."""
    definition = json.loads(next(p for p in STATEMACHINES if p.name == "pipeline.asl.json").read_text())
    machine = next(iter(resources_of(template, "AWS::StepFunctions::StateMachine").values()))
    substitutions = machine["Properties"]["DefinitionSubstitutions"]

    def tasks(states: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        for name, state in states.items():
            if state.get("Type") == "Map":
                yield from tasks(state["ItemProcessor"]["States"])
            elif state.get("Type") == "Task" and state["Resource"] == "arn:aws:states:::lambda:invoke":
                yield name, state

    checked = []
    for name, state in tasks(definition["States"]):
        variable = state["Parameters"]["FunctionName"].strip("${}")
        function = substitutions[variable]["Fn::GetAtt"][0]
        timeout = template["Resources"][function]["Properties"]["Timeout"]
        assert state["TimeoutSeconds"] > timeout, f"{name}: state {state['TimeoutSeconds']} s, function {timeout} s"
        checked.append(name)
    assert sorted(checked) == ["ExportFailed", "ExportTo", "MarkFailed", "Prepare", "StoreResults", "ValidateMetadata"]


def test_the_key_lets_step_functions_deliver_its_logs(template: dict[str, Any]) -> None:
    """A state machine encrypted with a customer managed key and logging to CloudWatch Logs needs the log
    delivery service to decrypt with that key (Step Functions, "Data at rest encryption"); without it the
    pipeline's error logs are never delivered."""
    machine = resources_of(template, "AWS::StepFunctions::StateMachine")
    assert any(m["Properties"].get("LoggingConfiguration") for m in machine.values())
    assert all(
        m["Properties"]["EncryptionConfiguration"]["KmsKeyId"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
        for m in machine.values()
    )
    statements = template["Resources"]["DataKey"]["Properties"]["KeyPolicy"]["Statement"]
    delivery = [s for s in statements if s.get("Principal", {}).get("Service") == "delivery.logs.amazonaws.com"]
    assert len(delivery) == 1
    actions = delivery[0]["Action"]
    assert "kms:Decrypt" in ([actions] if isinstance(actions, str) else actions)
    assert delivery[0]["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}


def test_the_dimse_listener_nlb_admits_dicom_from_the_configured_sources_only(template: dict[str, Any]) -> None:
    group = template["Resources"]["DimseSecurityGroup"]
    assert group["Condition"] == "CreateDimseSecurityGroup"
    (ingress,) = group["Properties"]["SecurityGroupIngress"]
    assert (ingress["IpProtocol"], ingress["FromPort"], ingress["ToPort"]) == ("tcp", 11112, 11112)
    assert ingress["CidrIp"] == {"Ref": "DicomSourceCidr"}
    (egress,) = group["Properties"]["SecurityGroupEgress"]
    assert (egress["FromPort"], egress["ToPort"]) == (11112, 11112)
    assert template["Outputs"]["DimseSecurityGroupId"]["Description"] == "Helm: dimse.securityGroupId"


def test_the_reconciler_runs_on_a_schedule_with_least_privilege(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    function = resources["ReconcileFunction"]["Properties"]
    assert function["ImageConfig"]["Command"] == [LAMBDA_FUNCTIONS["reconcile"][0]]
    schedule = resources["ReconcileSchedule"]["Properties"]
    assert schedule["ScheduleExpression"] == "rate(5 minutes)"
    assert schedule["Target"]["Arn"] == {"Fn::GetAtt": ["ReconcileFunction", "Arn"]}
    invoke = resources["ReconcileSchedulerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert invoke == [
        {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": {"Fn::GetAtt": ["ReconcileFunction", "Arn"]}}
    ]
    granted = statements(template, "ReconcileRole")
    assert granted["OpenStudies"]["Action"] == "dynamodb:Query"
    assert granted["OpenStudies"]["Resource"] == {"Fn::Sub": "${StatusTable.Arn}/index/open-studies"}
    assert not any(a.startswith("s3:") for s in granted.values() for a in as_list(s["Action"]))  # no data
    assert set(as_list(granted["Runs"]["Action"])) == {"dynamodb:UpdateItem", "dynamodb:GetItem"}
    assert granted["StartRuns"]["Resource"] == {"Ref": "Pipeline"}
    assert (
        function["Environment"]["Variables"]["RADSTREAM_STATE_MACHINE_NAME"]
        == (resources["Pipeline"]["Properties"]["StateMachineName"])
    )


def test_every_dead_letter_queue_failed_executions_and_the_reconciler_have_an_alarm(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    alarms = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    queues = [name for name, r in resources.items() if r["Type"] == "AWS::SQS::Queue" and "DeadLetter" in name]
    assert len(queues) == 3
    for queue in queues:
        (alarm,) = [
            a
            for a in alarms
            if a.get("Dimensions") == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}]
        ]
        assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible" and alarm["Threshold"] == 0
    watched = {(a["Namespace"], a["MetricName"]) for a in alarms}
    assert {("AWS/States", "ExecutionsFailed"), ("AWS/States", "ExecutionsTimedOut")} <= watched
    assert {("RadStream/Reconciler", "FoundWork"), ("RadStream/Reconciler", "Stuck")} <= watched
    assert all(a["AlarmActions"] == [{"Ref": "AlarmTopic"}] for a in alarms)
