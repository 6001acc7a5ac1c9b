"""The local cluster's node provider: Ray's fake multi-node provider, each node with its own
runtime-env folder.

Every node of the local cluster runs on this machine and shares the head's session folder. Ray's
working_dir plugin unpacks a job's working dir afresh on each node that first needs it, removing
the folder first; in one shared folder that deletes the directory the job's processes on the
other nodes run in (their cwd), and they fail (`FileNotFoundError` from `os.getcwd`, or a worker
that exits as it starts). On a real cluster every node has its own disk; here every node gets its
own `runtime_resources_*` folder, which is the same thing.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

try:
    from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
except ImportError:  # pragma: no cover - Ray is a dependency; this keeps the module importable without it
    FakeMultiNodeProvider = object  # type: ignore[assignment,misc]  # without Ray, a plain base keeps the module importable

MODULE = f"{__name__}.LocalNodeProvider"
_PARAMS = threading.Lock()


class LocalNodeProvider(FakeMultiNodeProvider):
    def _create_node_with_resources_and_labels(self, node_config: Any, tags: Any, count: Any, resources: Any,
                                               labels: Any) -> None:
        import ray._private.parameter as parameter

        # The fake provider builds the node's RayParams inline; this gives them their own folder.
        base = parameter.RayParams

        def own_folder(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("runtime_env_dir_name", f"runtime_resources_{uuid.uuid4().hex[:12]}")
            return base(*args, **kwargs)

        with _PARAMS:
            parameter.RayParams = own_folder  # type: ignore[misc,assignment]  # swapped for this one call, under _PARAMS
            try:
                super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
            finally:
                parameter.RayParams = base  # type: ignore[misc]  # and put back
