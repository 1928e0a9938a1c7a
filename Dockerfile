# The ticketflow image: the `ticketflow` command, run by an unprivileged user.
#   docker build -t ticketflow .
#   docker run --rm -v "$PWD/deploy/ticketflow.toml:/etc/ticketflow/ticketflow.toml:ro" \
#       ticketflow check-config /etc/ticketflow/ticketflow.toml
# bookworm: glibc 2.36, above what the bytewax (2.31) and confluent-kafka (2.28)
# manylinux wheels need, so pip installs wheels and the image needs no compiler.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the distribution is built from. pyproject.toml maps these folders onto the
# ticketflow.* packages, and its `readme` key needs README.md.
WORKDIR /usr/src/ticketflow
COPY pyproject.toml README.md ./
COPY ticketflow/ ticketflow/
COPY flows/ flows/
COPY operators/ operators/
COPY connectors/ connectors/
RUN pip install . \
    && cd / && rm -rf /usr/src/ticketflow

# A fixed uid, so files in the named volume keep their owner across image rebuilds.
# The volume is created from /var/lib/ticketflow on first use and inherits its owner.
RUN groupadd --system --gid 10001 ticketflow \
    && useradd --system --uid 10001 --gid ticketflow \
        --home-dir /var/lib/ticketflow --no-create-home --shell /usr/sbin/nologin ticketflow \
    && mkdir -p /var/lib/ticketflow /etc/ticketflow \
    && chown ticketflow:ticketflow /var/lib/ticketflow

WORKDIR /var/lib/ticketflow
USER ticketflow

# Metrics, /healthz and /readyz.
EXPOSE 9464

ENTRYPOINT ["ticketflow"]
CMD ["--help"]
