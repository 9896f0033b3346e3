# The one image of every galaxy-tasks service in docker-compose.yml (workers, beat, Flower,
# metrics, migration). Grid Engine's DRMAA library is included for the drmaa worker; the
# cluster's cell directory is mounted at run time ($SGE_ROOT).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DRMAA_LIBRARY_PATH=/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0 \
    SGE_ROOT=/var/lib/gridengine \
    SGE_CELL=default

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gridengine-client gridengine-drmaa1.0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md celeryconfig.py ./
COPY galaxy_tasks ./galaxy_tasks
COPY workers ./workers
COPY ops/install-mesos-extra.sh ./ops/install-mesos-extra.sh
RUN pip install '.[drmaa,flower,metrics]' \
 && PYTHON=python sh ops/install-mesos-extra.sh

RUN groupadd --gid 10001 galaxy \
 && useradd --uid 10001 --gid 10001 --home-dir /srv/galaxy-tasks --no-create-home galaxy \
 && install -d -o 10001 -g 10001 -m 0700 /srv/galaxy-tasks /srv/galaxy-tasks/jobs /srv/galaxy-tasks/home
USER 10001:10001
WORKDIR /srv/galaxy-tasks
CMD ["galaxy-tasks", "--help"]
