"""A canary release of a new checkpoint next to the current one (see elasticml.serve.canary).

    serve deploy serve_apps/canary.yaml
"""

from elasticml.serve.canary import build_canary_app as app

__all__ = ["app"]
