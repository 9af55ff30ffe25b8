"""Loaded by the schemathesis CLI (SCHEMATHESIS_HOOKS): STOW bodies are raw bytes, like octet-stream."""

import schemathesis

schemathesis.serializer.alias("multipart/related", "application/octet-stream")
