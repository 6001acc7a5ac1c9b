"""The one place elasticml makes boto3 clients (S3's bucket region, STS for tenants' credentials, EC2's
prices and placement scores).

boto3 is imported here only, and only when a client is made: the local paths never need it. Each
client gets a session of its own, since boto3's default session keeps the first credentials it found
for the life of the process. The endpoint for S3-compatible servers (moto on loopback in the tests) is
read from the environment in one place too.
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_REGION = "us-east-1"


def s3_endpoint() -> str | None:
    """`ELASTICML_S3_ENDPOINT`, else boto3's own `AWS_ENDPOINT_URL`, else AWS."""
    return os.environ.get("ELASTICML_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")


def client(service: str, *, region: str | None = None, endpoint_url: str | None = None, **kwargs: Any) -> Any:
    """A boto3 client of `service` in `region` (default `AWS_DEFAULT_REGION`, else us-east-1)."""
    import boto3

    region = region or os.environ.get("AWS_DEFAULT_REGION", DEFAULT_REGION)
    return boto3.session.Session().client(service, region_name=region, endpoint_url=endpoint_url, **kwargs)
