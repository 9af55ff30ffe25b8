"""Benchmark-only switch of the gateway's multipart parser, with no setting in product code.

With this folder first on ``PYTHONPATH`` and ``RADSTREAM_BENCH_MULTIPART_PARSER=module:Class``, every
Python process started so replaces ``gateway.dicomweb.multipart.MultipartParser`` by that class before
the STOW service imports it, and says so on stderr (the gateway's log). Used by
``loadtest.bench_multipart --stow``; ``loadtest.bench_stow`` runs under it unchanged.
"""

from __future__ import annotations

import importlib
import os
import sys

_TARGET = os.environ.get("RADSTREAM_BENCH_MULTIPART_PARSER")
if _TARGET:
    _module, _, _name = _TARGET.partition(":")
    _parser = getattr(importlib.import_module(_module), _name)
    _gateway = importlib.import_module("gateway.dicomweb.multipart")
    _gateway.MultipartParser = _parser
    print(f"[bench] multipart parser: {_parser.__module__}.{_parser.__qualname__}", file=sys.stderr, flush=True)
