"""The status table in DynamoDB: one item per (tenant, study), written by the gateway and the pipeline."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

from radstream.aws.errors import error_code, translate
from radstream.status import ReceivedWrite, StudyState, StudyStatus, utcnow


class StatusStore:
    """Typed access to the status table (partition key ``pk`` = tenant, sort key ``sk`` = study UID)."""

    def __init__(self, client: Any, table: str) -> None:
        self._ddb = client
        self.table = table

    async def record_received(self, tenant: str, study: str, token: str | None = None) -> ReceivedWrite:
        """Mark the study ``received``. Instance and series counts come from the study's manifests.

        ``token`` names the writer (the STOW request's id; random when not given), so that the write can
        be undone only while it is still the latest.
        """
        now, token = utcnow().isoformat(), token or uuid.uuid4().hex
        try:
            response = await self._ddb.update_item(
                TableName=self.table,
                Key={"pk": {"S": tenant}, "sk": {"S": study}},
                UpdateExpression=(
                    "SET #s = :received, created_at = if_not_exists(created_at, :now), updated_at = :now, "
                    "stage_times_ms = if_not_exists(stage_times_ms, :empty), received_by = :token"
                ),
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":received": {"S": StudyState.RECEIVED.value},
                    ":now": {"S": now},
                    ":empty": {"M": {}},
                    ":token": {"S": token},
                },
                ReturnValues="ALL_OLD",
            )
        except Exception as exc:
            raise translate(exc, "UpdateItem") from exc
        return ReceivedWrite(previous=response.get("Attributes"), updated_at=now, token=token)

    async def undo_received(self, tenant: str, study: str, write: ReceivedWrite) -> bool:
        """Put the row back as it was before ``write`` (remove it if there was none), unless something
        changed it since. True when undone."""
        condition = {  # this write is still the latest: its token, and no stage has updated the row since
            "ConditionExpression": "received_by = :token AND updated_at = :ours",
            "ExpressionAttributeValues": {":token": {"S": write.token}, ":ours": {"S": write.updated_at}},
        }
        if write.previous is None:
            key = {"pk": {"S": tenant}, "sk": {"S": study}}
            return await self._conditional(
                "DeleteItem", self._ddb.delete_item(TableName=self.table, Key=key, **condition)
            )
        return await self._conditional(
            "PutItem", self._ddb.put_item(TableName=self.table, Item=write.previous, **condition)
        )

    async def set_state(
        self,
        tenant: str,
        study: str,
        state: StudyState,
        *,
        stage: str | None = None,
        stage_ms: float | None = None,
        result_location: str | None = None,
        failure_reason: str | None = None,
        model: str | None = None,
    ) -> None:
        names = {"#s": "status"}
        values: dict[str, Any] = {":state": {"S": state.value}, ":now": {"S": utcnow().isoformat()}}
        sets = ["#s = :state", "updated_at = :now"]
        for field, value in (
            ("result_location", result_location),
            ("failure_reason", failure_reason),
            ("model", model),
        ):
            if value is not None:
                values[f":{field}"] = {"S": value}
                sets.append(f"{field} = :{field}")
        stage_times = {} if stage is None or stage_ms is None else {stage: {"N": f"{stage_ms:.3f}"}}
        timed = bool(stage_times)
        forms = (
            # The row exists (written by record_received, with its stage map): add to it.
            (
                "attribute_exists(pk)",
                [*sets, "stage_times_ms.#stage = :ms"] if timed else sets,
                {**names, "#stage": str(stage)} if timed else names,
                {**values, ":ms": stage_times[str(stage)]} if timed else values,
            ),
            # No row: a STOW request whose manifest started this execution had its `received` row removed by
            # another request's undo (that one failed while this one was still recording). It is created
            # here, unless one appeared meanwhile (then the first form applies).
            (
                "attribute_not_exists(pk)",
                [*sets, "created_at = if_not_exists(created_at, :now)", "stage_times_ms = :stages"],
                names,
                {**values, ":stages": {"M": stage_times}},
            ),
        )
        key = {"pk": {"S": tenant}, "sk": {"S": study}}
        while True:
            for condition, form_sets, form_names, form_values in forms:
                update = self._ddb.update_item(
                    TableName=self.table,
                    Key=key,
                    UpdateExpression="SET " + ", ".join(form_sets),
                    ConditionExpression=condition,
                    ExpressionAttributeNames=form_names,
                    ExpressionAttributeValues=form_values,
                )
                if await self._conditional("UpdateItem", update):
                    return

    async def _conditional(self, what: str, write: Awaitable[Any]) -> bool:
        """Await a conditional write: False when its condition did not hold; other errors translated."""
        try:
            await write
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise translate(exc, what) from exc
        return True

    async def reachable(self) -> bool:
        """Whether the table answers a read (of a key no study has: GetItem is all the gateway may do)."""
        try:
            await self._ddb.get_item(TableName=self.table, Key={"pk": {"S": "-"}, "sk": {"S": "readyz"}})
        except Exception:
            return False
        return True

    async def get(self, tenant: str, study: str, *, instances: int, series: int) -> StudyStatus | None:
        try:
            response = await self._ddb.get_item(
                TableName=self.table, Key={"pk": {"S": tenant}, "sk": {"S": study}}, ConsistentRead=True
            )
        except Exception as exc:
            raise translate(exc, "GetItem") from exc
        item = response.get("Item")
        if item is None:
            return None
        return StudyStatus(
            study_instance_uid=study,
            status=StudyState(item["status"]["S"]),
            instances=instances,
            series=series,
            created_at=datetime.fromisoformat(item["created_at"]["S"]),
            updated_at=datetime.fromisoformat(item["updated_at"]["S"]),
            stage_times_ms={k: float(v["N"]) for k, v in item.get("stage_times_ms", {}).get("M", {}).items()},
            result_location=item.get("result_location", {}).get("S"),
            failure_reason=item.get("failure_reason", {}).get("S"),
            model=item.get("model", {}).get("S"),
        )
