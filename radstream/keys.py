"""The S3 key layout: every object is namespaced by tenant, so one prefix holds one tenant's data.

Images bucket:
    instances/{tenant}/{study}/{series}/{sop}.dcm      one object per SOP instance
    manifests/{tenant}/{study}/{request_id}.json        one per STOW request that stored something new
                                                        (instances created carry the request id in their
                                                        metadata, ``request-id``)
    work/{tenant}/{study}/runs/{run}/plan.json          what one run infers (worker/formats/plan.py)
    work/{tenant}/{study}/runs/{run}/manifests.json     the request ids whose manifests the run covered
    work/{tenant}/{study}/runs/{run}/shard-{n}.json     what one PrepareTensors shard prepared
    work/{tenant}/{study}/runs/{run}/{i}.prepared.npz   model-ready tensor and pixel-free header of item i
    outputs/{tenant}/{study}/{seq}-{run}.npz            raw outputs of one run, with the source headers
    outputs/{tenant}/{study}/{seq}-{run}.json           ... and the instances they cover (written last)
Results bucket:
    results/{tenant}/{study}/result.json                the study's results; names the DICOM objects below
    results/{tenant}/{study}/runs/{id}/report.sr.dcm    the SR of one build of the results
    results/{tenant}/{study}/runs/{id}/seg-{n}.dcm      its Segmentations
"""

from __future__ import annotations

import re
import time
import uuid

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MANIFEST_PREFIX = "manifests/"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def is_uid(value: str) -> bool:
    """A DICOM UID: dot-separated digits, at most 64 characters (PS3.5 9.1)."""
    return len(value) <= 64 and bool(_UID.fullmatch(value))


def is_tenant(value: str) -> bool:
    """A tenant name: 1 to 64 letters, digits, '-' or '_' (it is a segment of every key)."""
    return bool(_TENANT.fullmatch(value))


def _check(tenant: str, *uids: str) -> None:
    if not _TENANT.fullmatch(tenant):
        raise ValueError(f"invalid tenant {tenant!r}")
    for uid in uids:
        if not is_uid(uid):
            raise ValueError(f"invalid UID {uid!r}")


def instance_key(tenant: str, study: str, series: str, sop: str) -> str:
    _check(tenant, study, series, sop)
    return f"instances/{tenant}/{study}/{series}/{sop}.dcm"


def manifest_key(tenant: str, study: str, request_id: str) -> str:
    _check(tenant, study)
    return f"{MANIFEST_PREFIX}{tenant}/{study}/{request_id}.json"


def study_manifest_prefix(tenant: str, study: str) -> str:
    _check(tenant, study)
    return f"{MANIFEST_PREFIX}{tenant}/{study}/"


OPEN_ASSOCIATIONS_PREFIX = "dimse/open/"


def open_association_key(tenant: str, request_id: str) -> str:
    """What an association stored and acknowledged before its manifest is written (dimse/recovery.py)."""
    _check(tenant)
    if not is_request_id(request_id):
        raise ValueError(f"not a request id: {request_id!r}")
    return f"{OPEN_ASSOCIATIONS_PREFIX}{tenant}/{request_id}.json"


def new_request_id() -> str:
    """A STOW request's id: its manifests' names and, in each instance object it creates, who created it."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"


FULL_REQUEST_SUFFIX = "-full"


def new_full_request_id() -> str:
    """The id of a reprocess request: its manifest lists nothing, and the run it starts infers every
    instance of the study again."""
    return new_request_id() + FULL_REQUEST_SUFFIX


def is_full_request(request_id: str) -> bool:
    return request_id.endswith(FULL_REQUEST_SUFFIX)


def is_request_id(value: str) -> bool:
    return bool(_REQUEST_ID.fullmatch(value))


def parse_manifest_key(key: str) -> tuple[str, str, str]:
    """(tenant, study, request_id) of a manifest key; ValueError for anything else."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] + "/" != MANIFEST_PREFIX or not parts[3].endswith(".json"):
        raise ValueError(f"not a manifest key: {key!r}")
    _check(parts[1], parts[2])
    return parts[1], parts[2], parts[3].removesuffix(".json")


RESULT_JSON = "result.json"  # results/{tenant}/{study}/result.json: the result document, written last
RESULT_SR = "report.sr.dcm"  # the SR's name, under the run's prefix (and at the top for older results)


def result_key(tenant: str, study: str, name: str) -> str:
    _check(tenant, study)
    return f"results/{tenant}/{study}/{name}"


def run_prefix(tenant: str, study: str, run_id: str) -> str:
    """Where one run keeps its working objects (the images bucket's work/ prefix expires them)."""
    _check(tenant, study)
    if not is_request_id(run_id):
        raise ValueError(f"not a run id: {run_id!r}")
    return f"work/{tenant}/{study}/runs/{run_id}/"


def plan_key(tenant: str, study: str, run_id: str) -> str:
    return f"{run_prefix(tenant, study, run_id)}plan.json"


def covered_key(tenant: str, study: str, run_id: str) -> str:
    """The ids of the requests (manifests) one run covered."""
    return f"{run_prefix(tenant, study, run_id)}manifests.json"


def shard_key(tenant: str, study: str, run_id: str, shard: int) -> str:
    return f"{run_prefix(tenant, study, run_id)}shard-{shard}.json"


def prepared_key(tenant: str, study: str, run_id: str, item: int) -> str:
    """The model-ready tensor and pixel-free header of one item of a run's plan (worker/formats/prepared.py).
    Named by its place in the plan, not its SOP Instance UID: two series may repeat one."""
    return f"{run_prefix(tenant, study, run_id)}{item}.prepared.npz"


OUTPUTS_PREFIX = "outputs/"


def outputs_prefix(tenant: str, study: str) -> str:
    """The raw outputs of every run of the study: kept as long as the instances (not under work/), so results
    rebuilt later still list every instance."""
    _check(tenant, study)
    return f"{OUTPUTS_PREFIX}{tenant}/{study}/"


def outputs_key(tenant: str, study: str, seq: int, run_id: str, suffix: str = ".npz") -> str:
    """``{seq}-{run}``: the run's sequence number in the study first, so names sort in the order runs began."""
    if not is_request_id(run_id):
        raise ValueError(f"not a run id: {run_id!r}")
    return f"{outputs_prefix(tenant, study)}{seq:06d}-{run_id}{suffix}"
