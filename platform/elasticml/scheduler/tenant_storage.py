"""A tenant's own corner of the bucket, and the short-lived credentials that reach only it.

Layout: a tenant's data and checkpoints live under `s3://BUCKET/tenants/TENANT/`. On a cloud
cluster the nodes' own roles are denied `tenants/*` outright (cluster_configs/aws/*-policy.json),
so a tenant's job reaches its prefix only with credentials the scheduler vends for it: an STS
AssumeRole of the tenant's role (`elasticml-CLUSTER-tenant-TENANT`, whose policy allows that
prefix alone), narrowed again by a session policy naming the prefix, for at most
MAX_SESSION_HOURS. The scheduler (on the head, whose role may assume tenant roles) vends them
through its door to the tenant itself (or an admin); a job installs them in its driver and its
workers (`storage.use_credentials`).

Configured on the head by `ELASTICML_TENANT_ROLE_ARN`, an ARN with `{tenant}` in it; without it
(a local cluster) nothing is vended and prefixes are not required.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from elasticml.dataconf import check_number, check_text
from elasticml.errors import ConfigError, PlacementRefused
from elasticml.scheduler.spec import MAX_NAME, NAME_PATTERN, REGION_PATTERN, TenantPolicy
from elasticml.storage import S3Credentials

ROLE_ENV = "ELASTICML_TENANT_ROLE_ARN"
STS_ENDPOINT_ENV = "ELASTICML_STS_ENDPOINT"
MAX_SESSION_HOURS = 12.0
"""IAM's longest role session (the role's MaxSessionDuration must allow it)."""


def tenant_prefix(tenant: str) -> str:
    return f"tenants/{tenant}/"


def check_confined(tenant: str, uri: str) -> None:
    """PlacementRefused unless an s3:// URI lies under the tenant's own prefix (any bucket)."""
    if not uri.startswith("s3://"):
        return
    _, _, key = uri.removeprefix("s3://").partition("/")
    if not f"{key.rstrip('/')}/".startswith(tenant_prefix(tenant)):
        raise PlacementRefused(uri[:300], f"tenant {tenant}'s data and checkpoints live under "
                                          f"s3://BUCKET/{tenant_prefix(tenant)}; {uri[:200]} is outside it")


def session_policy(bucket: str, tenant: str) -> dict[str, Any]:
    """The prefix again, as the session's own limit: even a role granted too much reaches only this."""
    prefix = tenant_prefix(tenant)
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
         "Resource": f"arn:aws:s3:::{bucket}/{prefix}*"},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}",
         "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}}},
        {"Effect": "Allow", "Action": ["s3:GetBucketLocation"], "Resource": f"arn:aws:s3:::{bucket}"},
        {"Effect": "Allow", "Action": ["kms:GenerateDataKey", "kms:Decrypt"], "Resource": "*"},
    ]}


@dataclass(frozen=True)
class CredentialVendor:
    """STS AssumeRole of a tenant's role, confined to its prefix of one bucket."""

    role_arn: str
    """With `{tenant}` in it, e.g. arn:aws:iam::123456789012:role/elasticml-aws-cpu-tenant-{tenant}."""
    endpoint: str | None = None

    @classmethod
    def from_env(cls) -> CredentialVendor | None:
        arn = os.environ.get(ROLE_ENV)
        if not arn:
            return None
        if "{tenant}" not in arn or not arn.startswith("arn:") or len(arn) > 300:
            raise ConfigError("must be a role ARN with {tenant} in it", field=ROLE_ENV)
        return cls(role_arn=arn, endpoint=os.environ.get(STS_ENDPOINT_ENV) or os.environ.get("ELASTICML_S3_ENDPOINT"))

    def vend(self, tenant: str, bucket: str, hours: float) -> S3Credentials:
        from elasticml.aws_client import client

        sts = client("sts", endpoint_url=self.endpoint)
        got = sts.assume_role(RoleArn=self.role_arn.format(tenant=tenant), RoleSessionName=f"elasticml-{tenant}"[:64],
                              DurationSeconds=int(max(900, min(hours, MAX_SESSION_HOURS) * 3600)),
                              Policy=json.dumps(session_policy(bucket, tenant)))
        c = got["Credentials"]
        expiration = c["Expiration"].timestamp() if hasattr(c["Expiration"], "timestamp") else time.time() + 900
        return S3Credentials(access_key_id=c["AccessKeyId"], secret_access_key=c["SecretAccessKey"],
                             session_token=c["SessionToken"], expiration=expiration,
                             prefix=f"{bucket}/{tenant_prefix(tenant)}")


def check_residency(policy: TenantPolicy, vendor: CredentialVendor | None, region: str, what: str = "") -> None:
    """Refuse (PlacementRefused) data or checkpoints of the policy's tenant in `region` outside its
    regions, and (where tenants' prefixes are kept, `vendor` set) outside its own prefix."""
    check_text(region, field="region", max_len=32, pattern=REGION_PATTERN)
    if what:
        check_text(what, field="what", max_len=300)
    tenant = policy.tenant
    if policy.regions and region not in policy.regions:
        raise PlacementRefused(what or tenant, f"data residency: tenant {tenant} is kept to {list(policy.regions)}, "
                                               f"but {what or 'the storage'} is in {region}")
    if vendor is not None:
        check_confined(tenant, what)


def storage_credentials(vendor: CredentialVendor | None, tenant: str, bucket: str, hours: float = 1.0
                        ) -> S3Credentials | None:
    """Short-lived credentials that reach only s3://BUCKET/tenants/TENANT/; None where this cluster
    keeps no tenant prefixes (nothing configured to vend them)."""
    check_text(tenant, field="tenant", max_len=MAX_NAME, pattern=NAME_PATTERN)
    check_text(bucket, field="bucket", max_len=63, pattern=r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
    check_number(hours, field="hours", lo=0.25, hi=MAX_SESSION_HOURS)
    if vendor is None:
        return None
    return vendor.vend(tenant, bucket, float(hours))
