"""``radstream infer FILE...``: run local DICOM files through preprocessing, the batcher and Triton.

Prints one JSON line per file, in the order given. A file that is not DICOM, cannot be decoded or has no
matching model gets a line with an ``"error"`` field instead of ``"outputs"``.

Exit codes: 0 every file inferred; 1 at least one file failed; 2 Triton or the model was unusable
(unreachable within the readiness timeout, model missing), so no file could be inferred.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from radstream.settings import Settings
from worker.inference.errors import NoModelForImage
from worker.inference.service import InferenceService
from worker.inference.triton.client import TritonClient
from worker.inference.triton.errors import TritonError, TritonUnavailable
from worker.models.errors import PreprocessError
from worker.models.preprocess import read_dataset
from worker.models.spec import load_specs

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_TRITON_UNUSABLE = 2
READINESS_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 30.0


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 3) for key, value in timings.items()}


async def _infer_one(service: InferenceService, path: Path) -> dict[str, Any]:
    line: dict[str, Any] = {"file": str(path)}
    try:
        ds = await asyncio.to_thread(read_dataset, path)
        line["sop_instance_uid"] = str(ds.get("SOPInstanceUID", ""))
        output = await service.infer_dataset(ds)
    except (PreprocessError, NoModelForImage, TritonError) as exc:
        line["error"] = f"{type(exc).__name__}: {exc}"
        return line
    line.update(
        {
            "model": {"name": output.model_name, "version": output.model_version},
            "outputs": {
                "probability": round(output.probability, 6),
                "label": output.label,
                "peak": {"row": round(output.peak_row, 2), "col": round(output.peak_col, 2)},
            },
            "timings_ms": _rounded(output.timings_ms),
        }
    )
    return line


async def infer_files_async(
    paths: list[Path],
    triton_url: str,
    settings: Settings,
    out: TextIO,
    *,
    readiness_timeout_s: float = READINESS_TIMEOUT_S,
) -> int:
    specs = load_specs(settings.model_repository)
    async with TritonClient(
        triton_url, readiness_timeout_s=readiness_timeout_s, shared_memory=settings.triton_shared_memory
    ) as client:
        try:
            for spec in specs:
                await client.wait_until_ready(spec.name, spec.version)
        except TritonError as exc:
            reason = "unreachable" if isinstance(exc, TritonUnavailable) else "not ready"
            error = f"Triton at {triton_url} {reason}: {type(exc).__name__}: {exc}"
            for path in paths:
                print(json.dumps({"file": str(path), "error": error}), file=out, flush=True)
            return EXIT_TRITON_UNUSABLE
        async with InferenceService(client, specs, request_timeout_s=REQUEST_TIMEOUT_S) as service:
            lines = await asyncio.gather(*(_infer_one(service, path) for path in paths))
    for line in lines:
        print(json.dumps(line), file=out, flush=True)
    return EXIT_SOME_FAILED if any("error" in line for line in lines) else EXIT_OK


def infer_files(paths: list[Path], triton_url: str, settings: Settings, out: TextIO | None = None) -> int:
    """Infer every file and print one JSON line each to ``out`` (stdout); returns the exit code."""
    return asyncio.run(infer_files_async(paths, triton_url, settings, out or sys.stdout))
