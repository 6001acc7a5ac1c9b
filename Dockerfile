# The platform's image: the matching rayproject/ray release with elasticml installed, for KubeRay pods
# and the AWS YAMLs' docker option. Build both flavours (the tag is the definition's image_tag):
#   docker build -t ghcr.io/elasticml/elasticml:0.1.0-cpu .
#   docker build -t ghcr.io/elasticml/elasticml:0.1.0-gpu --build-arg RAY_TAG=2.60.0-py311-cu124 \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
ARG RAY_TAG=2.60.0-py311-cpu
FROM rayproject/ray:${RAY_TAG}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Made by the base image's user (ray), so the install below may write in it.
RUN mkdir -p /home/ray/elasticml
WORKDIR /home/ray/elasticml
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users platform ./platform
COPY --chown=ray:users serve_apps ./serve_apps
COPY --chown=ray:users jobs ./jobs
# Ray stays the base image's own (the package pins 2.60.x); torch from the index of the base's flavour.
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" "torch==2.13.0" . \
    && python -c "import elasticml.provision.tls, serve_apps.completion"
