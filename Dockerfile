# Interlock images. One Dockerfile, one target per service; skaffold.yaml builds each
# target as its own image (interlock-<target>):
#   docker build --target router -t interlock-router .
# Targets: router, ratelimit, budget, traceingest, fakeprovider.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: wheels of Interlock and its dependencies, installed into a venv ---------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what the wheel is made of. setup.py runs scripts/gen_protos.py on protos/, so the
# gRPC stubs are generated here, inside the build, never copied from a work tree.
COPY pyproject.toml setup.py README.md ./
COPY scripts/gen_protos.py scripts/
COPY protos/ protos/
COPY libs/ libs/
COPY services/ services/
RUN pip wheel --wheel-dir /wheels .
# The runtime stage copies this venv whole: it gets no pip, compiler or wheel cache.
RUN python -m venv --without-pip /opt/interlock \
 && pip --python /opt/interlock/bin/python install --no-index --find-links /wheels interlock

# --- runtime: the venv on a clean base, non-root -------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# GRPC_EXPERIMENTS: the services' default for gRPC core (interlock._server.GRPC_EXPERIMENTS);
# a pod's own env entry overrides it.
ENV PATH=/opt/interlock/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRPC_EXPERIMENTS=-event_engine_listener,-event_engine_for_all_other_endpoints,-event_engine_client
# A numeric USER lets Kubernetes verify runAsNonRoot. /var/lib/interlock is where state goes;
# in a pod it is a volume (emptyDir or PVC) because the root filesystem is read-only.
RUN groupadd --system --gid 10001 interlock \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin interlock \
 && install -d -o 10001 -g 10001 /var/lib/interlock
COPY --from=build /opt/interlock /opt/interlock
WORKDIR /var/lib/interlock
USER 10001:10001

# --- one target per service -----------------------------------------------------------------
FROM runtime AS router
EXPOSE 50051
ENTRYPOINT ["python", "-m", "interlock.services.router"]

FROM runtime AS ratelimit
EXPOSE 50052
ENTRYPOINT ["python", "-m", "interlock.services.ratelimit"]

FROM runtime AS budget
EXPOSE 50053
ENTRYPOINT ["python", "-m", "interlock.services.budget"]

FROM runtime AS traceingest
EXPOSE 50054
ENTRYPOINT ["python", "-m", "interlock.services.traceingest"]

FROM runtime AS fakeprovider
EXPOSE 8089
ENTRYPOINT ["python", "-m", "interlock.services.fakeprovider"]
CMD ["--host", "0.0.0.0", "--port", "8089"]
