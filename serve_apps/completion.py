"""Text completion over HTTP from a training checkpoint.

    serve run serve_apps.completion:app checkpoint=/path/to/checkpoint_...
    serve deploy serve_apps/completion.yaml

The deployment itself is `elasticml.serve.completion.Completer`.
"""

from elasticml.serve.completion import build_app as app

__all__ = ["app"]
