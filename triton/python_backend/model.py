"""Triton python-backend model that runs an ONNX file with onnxruntime on CPU.

The local stack wraps the production ONNX file with this model so that the real ``tritonserver`` binary
(which ships here without the onnxruntime backend) serves exactly the same graph. Triton's dynamic
batcher hands ``execute`` several requests at once; they are concatenated into one onnxruntime call and
the outputs are split back per request.

The ONNX file is ``<model_repository>/<version>/<onnx_file>`` where ``onnx_file`` is a config parameter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / params.get("onnx_file", "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_num_threads", "1"))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds: dict[str, np.ndarray] = {}
        sizes: list[int] = []
        for name in self.input_names:
            arrays = [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for request in requests]
            feeds[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            sizes = [len(array) for array in arrays]
        try:
            results = self.session.run(self.output_names, feeds)
        except Exception as exc:  # onnxruntime raises several unrelated exception types
            error = pb_utils.TritonError(f"onnxruntime failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for size in sizes:
            outputs = [
                pb_utils.Tensor(name, np.ascontiguousarray(result[start : start + size]))
                for name, result in zip(self.output_names, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            start += size
        return responses

    def finalize(self) -> None:
        self.session = None
