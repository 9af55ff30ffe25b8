# syntax=docker/dockerfile:1
# RadStream: one image for the gateway and the worker, plus a Lambda image for the pipeline handlers.
#
#   docker build -t radstream:TAG .                          # gateway (default command) and worker
#   docker build --target lambda -t radstream:lambda-TAG .    # the pipeline's Lambda handlers
#
# Gateway: uvicorn gateway.main:create_app --factory --host 0.0.0.0 --port 8080   (the default CMD)
# Worker:  radstream worker                                                      (override the command)
# Lambda:  CMD is the handler (CloudFormation ImageConfig.Command), one of infra/resources.py
#          LAMBDA_FUNCTIONS: worker.stages.main.start_pipeline, worker.stages.main.validate_metadata,
#          worker.stages.main.prepare_tensors, worker.stages.main.store_results, worker.stages.main.mark_failed,
#          worker.stages.main.export_results,
#          worker.stages.main.reconcile
#
# Both images carry the model specs (triton/models/<model>/spec.json, nothing else of triton/: Triton
# serves the ONNX files from S3) in /opt/radstream/triton/models, where RADSTREAM_MODEL_REPOSITORY points:
# ValidateMetadata routes studies with them, PrepareTensors and the worker preprocess with them.
#
# The base is pinned by tag in the one FROM line below; for a reproducible release pin it by digest as
# well (python:3.11-slim-bookworm@sha256:...; `docker buildx imagetools inspect python:3.11-slim-bookworm`
# prints the digest of the day) and let the dependency bot bump it.

# ---------------------------------------------------------------- base: Debian 12 + CPython 3.11
FROM python:3.11-slim-bookworm AS base
RUN groupadd --system --gid 10001 radstream \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin radstream

# ---------------------------------------------------------------- build: the virtual environment
FROM base AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/radstream
ENV PATH=/opt/radstream/bin:$PATH
WORKDIR /src
# Exact versions first (a layer that changes only with the lock), then our four packages without deps.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-virtualenv -r requirements.lock
COPY pyproject.toml README.md ./
COPY radstream ./radstream
COPY gateway ./gateway
COPY worker ./worker
COPY infra ./infra
COPY cli ./cli
# .dockerignore lets only the spec.json files of triton/models into the context.
COPY triton/models /opt/radstream/triton/models
RUN pip install --no-cache-dir --require-virtualenv --no-deps --no-build-isolation . \
    && python -m compileall -q /opt/radstream \
    && python -c "from pathlib import Path; from worker.models.spec import load_specs; \
assert load_specs(Path('/opt/radstream/triton/models')), 'no model specs in the image'"

# ---------------------------------------------------------------- build-lambda: + the runtime interface
# Not FROM public.ecr.aws/lambda/python:3.11: that base is Amazon Linux 2 (glibc 2.26) and the lock
# holds manylinux_2_28+ wheels. A Lambda container image may be any image that runs the Lambda
# Runtime Interface Client, so the Lambda image is this same Debian environment plus awslambdaric.
FROM build AS build-lambda
RUN pip install --no-cache-dir --require-virtualenv --no-deps \
        awslambdaric==4.2.2 simplejson==4.3.0 snapshot-restore-py==1.0.0 \
    && python -m compileall -q /opt/radstream

# ---------------------------------------------------------------- lambda: the pipeline handlers
FROM base AS lambda
# One BLAS thread: PrepareTensors resizes images with small matrix products, where BLAS's thread pool
# only spins (measured on the local stack: it doubled the handlers' CPU per study).
ENV PATH=/opt/radstream/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    RADSTREAM_ENVIRONMENT=production \
    RADSTREAM_MODEL_REPOSITORY=/opt/radstream/triton/models
COPY --from=build-lambda /opt/radstream /opt/radstream
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["python", "-m", "awslambdaric"]
CMD ["worker.stages.main.validate_metadata"]

# ---------------------------------------------------------------- runtime: gateway and worker (default)
FROM base AS runtime
ENV PATH=/opt/radstream/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RADSTREAM_ENVIRONMENT=production \
    RADSTREAM_HTTP_HOST=0.0.0.0 \
    RADSTREAM_HTTP_PORT=8080 \
    RADSTREAM_STATE_DIR=/tmp/radstream \
    RADSTREAM_MODEL_REPOSITORY=/opt/radstream/triton/models
COPY --from=build /opt/radstream /opt/radstream
# The root filesystem may be read-only (Kubernetes mounts /tmp); nothing is written elsewhere.
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
# Kubernetes probes /healthz and /readyz; the image itself declares no Docker health check because the
# worker runs from it too and serves no HTTP.
HEALTHCHECK NONE
CMD ["uvicorn", "gateway.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8080"]
