"""A `SchedulerClient` over the API server: the same methods and answers as over Ray, with only
the caller's credential (no Ray token, no Ray connection).

    client = SchedulerClient(HttpTransport("https://head:8443", credential_path))

Errors come back as the platform's own: a 403 is `AccessDenied`, a 409 `PlacementRefused`, a 400
`ConfigError` naming the field, a 429 is retried after its Retry-After (a few times), a 503 is
`SchedulerNotRunning`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from elasticml.api import wire
from elasticml.errors import AccessDenied, AuthError, ConfigError, PlacementRefused, SchedulerError, SchedulerNotRunning
from elasticml.scheduler.identity import read_credential

ENDPOINT_ENV = "ELASTICML_ENDPOINT"
MAX_RETRIES_429 = 5


class HttpTransport:
    def __init__(self, endpoint: str, credential: str | Path, *, verify: str | bool = True,
                 timeout_s: float = 120.0) -> None:
        if not endpoint.startswith(("https://", "http://127.0.0.1", "http://localhost", "http://[::1]")):
            raise ConfigError("must be https://, or http:// on loopback only", field="endpoint")
        self.endpoint = endpoint.rstrip("/")
        self._token = read_credential(credential)
        if isinstance(verify, str):  # the cluster's CA certificate
            import ssl

            verify = ssl.create_default_context(cafile=verify)  # type: ignore[assignment]  # the same choice in the form httpx takes
        self._http = httpx.Client(timeout=timeout_s, verify=verify)

    def __call__(self, route: str, args: dict[str, Any], *, wait: bool = True) -> Any:
        body = {k: (v.to_dict() if hasattr(v, "to_dict") and k in wire.NESTED else wire._plain(v)) for k, v in args.items()}
        return self.post(route, body)

    def post(self, route: str, body: Any) -> Any:
        """POST /v1/ROUTE with a JSON body; its answer, or the platform's error for its status."""
        for attempt in range(MAX_RETRIES_429 + 1):
            try:
                reply = self._http.post(f"{self.endpoint}/v1/{route}", json=body,
                                        headers={"Authorization": f"Bearer {self._token}"})
            except httpx.HTTPError as exc:
                raise SchedulerNotRunning(f"{self.endpoint} ({type(exc).__name__})") from None
            if reply.status_code == 429 and attempt < MAX_RETRIES_429:
                time.sleep(min(30.0, float(reply.headers.get("retry-after", "1"))))
                continue
            break
        try:
            data = reply.json()
        except ValueError:
            raise SchedulerError(f"the API server answered {reply.status_code} without JSON") from None
        if reply.status_code == 200:
            return wire.decode_answer(route, data.get("answer"))
        message, field, details = str(data.get("message", "")), data.get("field"), data.get("details") or {}
        if reply.status_code == 403 and details:
            raise AccessDenied(details.get("who", "?"), details.get("action", route), details.get("reason", message))
        if reply.status_code == 401:
            raise AuthError(message)
        if reply.status_code == 409 and details:
            raise PlacementRefused(details.get("workload", "?"), details.get("reason", message))
        if reply.status_code == 503:
            raise SchedulerNotRunning(self.endpoint)
        if reply.status_code in (400, 413):
            raise ConfigError(message.split(": ", 1)[1] if field and message.startswith(f"{field}: ") else message,
                              field=field or "body")
        raise SchedulerError(f"the API server answered {reply.status_code}: {message}")

    def close(self) -> None:
        self._http.close()
