# The platform's image: the matching rayproject/ray release with elasticml installed, for KubeRay pods
# and the AWS YAMLs' docker option. Every package comes from a lock (requirements/, refreshed by
# `./dev lock`), at its version and hash. Build both flavours (the tag is the definition's image_tag):
#   docker build -t ghcr.io/elasticml/elasticml:0.1.0-cpu .
#   docker build -t ghcr.io/elasticml/elasticml:0.1.0-gpu --build-arg RAY_TAG=2.60.0-py311-cu124 \
#       --build-arg LOCK=runtime-cuda.lock .
ARG RAY_TAG=2.60.0-py311-cpu
FROM rayproject/ray:${RAY_TAG}
# runtime-cpu.lock holds torch's CPU build (2.13.0+cpu, from PyTorch's CPU index); runtime-cuda.lock
# PyPI's 2.13.0, the CUDA build with its nvidia-* libraries.
ARG LOCK=runtime-cpu.lock
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
# Made by the base image's user (ray), so the install below may write in it.
RUN mkdir -p /home/ray/elasticml
WORKDIR /home/ray/elasticml
COPY --chown=ray:users requirements/${LOCK} ./requirements/
RUN pip install --no-cache-dir --require-hashes --extra-index-url "${TORCH_CPU_INDEX}" -r "requirements/${LOCK}"
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users platform ./platform
COPY --chown=ray:users serve_apps ./serve_apps
COPY --chown=ray:users jobs ./jobs
# The package alone: everything it needs is already installed from the lock. Editable, so that the package
# finds the files shipped beside it (elasticml.repo: the API server runs jobs/train.py from here); a plain
# install would look for them next to site-packages. Cluster configs are not in the image: they hold the
# site's values, and a KubeRay head reads the scheduler's from its ConfigMap (elasticml-NAME-scheduler).
RUN pip install --no-cache-dir --no-deps --no-build-isolation --editable . \
    && python -c "import elasticml.provision.k8s_watcher, serve_apps.completion; from elasticml.repo import JOBS; \
assert (JOBS / 'train.py').is_file(), JOBS"
