# The verify worker: Lean 4 + Mathlib + leanprover-community/repl, pinned to one Lean version, and our checker.
#
#   docker build -f Dockerfile.lean --build-arg LEAN_VERSION=v4.15.0 -t oprover-lean:v4.15.0 .
#
# Mathlib and the repl both tag every Lean release, so LEAN_VERSION pins all three (see docs/lean.md for
# switching). Mathlib's compiled cache is fetched at build time: the container never downloads at run time.
# The toolchain, Mathlib and the repl belong to root and are read-only. The worker runs as root with every
# capability dropped but CAP_SETUID/CAP_SETGID (deploy/lean/compose.yaml, deploy/k8s): each REPL and each replay
# runs under a uid of its own from OPROVER_LEAN_SANDBOX_UID_BASE (not the worker's), in its own network namespace
# with a private temp dir (services/lean/sandbox.py, sandbox_launch.py).
# The kernel replay program (services/lean/lean_files/OproverReplay.lean), whose verdict alone decides a pass, is
# built here against the same Lean version.
FROM python:3.11.11-slim-bookworm

ARG LEAN_VERSION=v4.15.0
ARG ELAN_VERSION=v4.0.0

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl git procps util-linux \
 && rm -rf /var/lib/apt/lists/*

ENV ELAN_HOME=/opt/elan \
    PATH=/opt/elan/bin:$PATH
RUN curl -sSfL "https://raw.githubusercontent.com/leanprover/elan/${ELAN_VERSION}/elan-init.sh" -o /tmp/elan-init.sh \
 && sh /tmp/elan-init.sh -y --no-modify-path --default-toolchain "leanprover/lean4:${LEAN_VERSION}" \
 && rm /tmp/elan-init.sh \
 && elan --version && lean --version

WORKDIR /opt/lean
# `cd` into the fresh clone within one RUN: clone, check and build stay one layer.
# hadolint ignore=DL3003
RUN git clone --depth 1 --branch "${LEAN_VERSION}" https://github.com/leanprover-community/mathlib4 mathlib4 \
 && cd mathlib4 && test "$(cat lean-toolchain)" = "leanprover/lean4:${LEAN_VERSION}" \
 && lake exe cache get \
 && lake env true \
 && git rev-parse HEAD > /opt/lean/MATHLIB_REV
# hadolint ignore=DL3003
RUN git clone --depth 1 --branch "${LEAN_VERSION}" https://github.com/leanprover-community/repl repl \
 && cd repl && test "$(cat lean-toolchain)" = "leanprover/lean4:${LEAN_VERSION}" \
 && lake build \
 && git rev-parse HEAD > /opt/lean/REPL_REV
# The kernel replay program: a small Lean executable on the same toolchain (it needs only Lean to build; at run
# time `lake env` in the Mathlib project gives it Mathlib's modules to import). A build failure stops the image.
COPY services/lean/lean_files /opt/lean/replay
# hadolint ignore=DL3003
RUN cd /opt/lean/replay \
 && echo "leanprover/lean4:${LEAN_VERSION}" > lean-toolchain \
 && lake build \
 && test -x .lake/build/bin/oprover-replay
# Everything Lean-side read-only to the worker (and to any code Lean runs on its behalf). `lake env true` above
# wrote the workspace's own caches first, so `lake env` at run time has nothing to write.
RUN chmod -R a-w /opt/elan /opt/lean

WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock
COPY services ./services
COPY api ./api
COPY workers ./workers
RUN pip install --no-cache-dir --no-deps .

ENV OPROVER_LEAN_CMD="lake env /opt/lean/repl/.lake/build/bin/repl" \
    OPROVER_LEAN_REPLAY_CMD="lake env /opt/lean/replay/.lake/build/bin/oprover-replay" \
    OPROVER_LEAN_CWD=/opt/lean/mathlib4 \
    OPROVER_LEAN_VERSION=${LEAN_VERSION} \
    OPROVER_LEAN_REPL_VERSION=${LEAN_VERSION}
# No USER: the worker needs root's uid to switch each REPL to its own (with only CAP_SETUID/CAP_SETGID left by
# the runtime); it refuses to start without them unless OPROVER_LEAN_SANDBOX_SHARED_UID=true (docs/lean.md).
# Healthy = the worker has at least one warm REPL (the header imported); Mathlib's import takes a while.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD ["pgrep", "-f", "/opt/lean/repl/.lake/build/bin/repl"]
CMD ["oprover", "worker", "verify"]
