"""Where a tenant's commands reach the scheduler: the API server and credential that `elasticml login`
remembers (or $ELASTICML_ENDPOINT with $ELASTICML_CREDENTIAL_PATH, or `elasticml --endpoint URL`).

With one configured, the scheduler commands of the CLI go to that server with that credential, with no
Ray connection and no Ray token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from elasticml.api.transport import ENDPOINT_ENV, HttpTransport
from elasticml.errors import ConfigError
from elasticml.home import home
from elasticml.scheduler.identity import CREDENTIAL_ENV

if TYPE_CHECKING:
    from elasticml.scheduler.client import SchedulerClient

CA_ENV = "ELASTICML_CA_CERT"


def login_file() -> Path:
    return home() / "login.json"


def configured_client() -> SchedulerClient | None:
    """A SchedulerClient over HTTP when an endpoint is configured (flag/env, then the login file), else None."""
    from elasticml.scheduler.client import SchedulerClient

    endpoint, credential = os.environ.get(ENDPOINT_ENV), os.environ.get(CREDENTIAL_ENV)
    ca_cert = os.environ.get(CA_ENV)
    if not endpoint and login_file().is_file():
        try:
            saved = json.loads(login_file().read_text())
        except ValueError:
            raise ConfigError(f"{login_file()} is not the JSON `elasticml login` writes: run it again") from None
        endpoint, credential = saved.get("endpoint"), credential or saved.get("credential")
        ca_cert = ca_cert or saved.get("ca_cert")
    if not endpoint:
        return None
    if not credential:
        raise ConfigError(f"an endpoint needs a credential file: `elasticml login` or ${CREDENTIAL_ENV}",
                          field="credential")
    # A server beyond loopback speaks HTTPS with a certificate from the cluster's CA: $ELASTICML_CA_CERT names it.
    return SchedulerClient(HttpTransport(str(endpoint), str(credential), verify=ca_cert or True))
