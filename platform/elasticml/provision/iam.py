"""IAM and S3 policy documents for an AWS cluster: the head's, the workers', each tenant's, the bucket's.

Least privilege, by construction: nodes reach the checkpoint bucket but not tenants' prefixes; a tenant's
role reaches its own prefix only, and only the head may assume it; the head launches and manages only
instances tagged for its own cluster.
"""

from __future__ import annotations

from typing import Any, Literal

from elasticml.provision.definition import ClusterDefinition

RAY_CLUSTER_TAG = "ray-cluster-name"
"""The tag Ray's AWS node provider puts on every instance it launches (ray.autoscaler.tags)."""
TENANT_ROLE_ENV = "ELASTICML_TENANT_ROLE_ARN"
"""Set for the head's Ray (and so its scheduler actor): the tenant roles it vends credentials of."""


SPOT_SERVICE = "spot.amazonaws.com"
"""The service whose service-linked role (AWSServiceRoleForEC2Spot) EC2 launches spot instances with."""


def node_role(d: ClusterDefinition, kind: Literal["head", "worker"]) -> str:
    """`elasticml-NAME-head` or `-worker`: the name of a node's role and of the instance profile holding it
    (the launcher YAMLs name the profile, the head passes the worker's role, tenants trust the head's)."""
    return f"elasticml-{d.name}-{kind}"


def instance_profile(d: ClusterDefinition, kind: Literal["head", "worker"]) -> str:
    return f"arn:aws:iam::{d.account_id}:instance-profile/{node_role(d, kind)}"


def tenant_role(d: ClusterDefinition) -> str:
    return f"arn:aws:iam::{d.account_id}:role/elasticml-{d.name}-tenant-{{tenant}}"


OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]


def use_key(d: ClusterDefinition) -> dict[str, Any]:
    # Objects are encrypted with the cluster's KMS key (the bucket's default): reading and writing
    # them needs that key, and only that one.
    return {"Sid": "UseTheBucketsKey", "Effect": "Allow", "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
            "Resource": f"arn:aws:kms:{d.region}:{d.account_id}:key/*",
            "Condition": {"ForAnyValue:StringEquals": {"kms:ResourceAliases": f"alias/elasticml-{d.name}"}}}


def bucket_statements(d: ClusterDefinition) -> list[dict[str, Any]]:
    bucket = f"arn:aws:s3:::{d.bucket}"
    return [
        # GetBucketLocation: the residency check asks the bucket's region before anything is written.
        {"Sid": "ListCheckpointBucket", "Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
         "Resource": bucket},
        {"Sid": "ReadWriteCheckpoints", "Effect": "Allow", "Action": OBJECT_ACTIONS, "Resource": f"{bucket}/*"},
        # Tenants' prefixes are out of the nodes' reach (any code on a node has its role): a tenant's job
        # reaches its own prefix only with the credentials the scheduler vends for its role.
        {"Sid": "NotTenantsData", "Effect": "Deny", "Action": OBJECT_ACTIONS, "Resource": f"{bucket}/tenants/*"},
        {"Sid": "NotTenantsListing", "Effect": "Deny", "Action": ["s3:ListBucket"], "Resource": bucket,
         "Condition": {"StringLike": {"s3:prefix": ["tenants/*"]}}},
        use_key(d),
    ]


def tenant_policy(d: ClusterDefinition, tenant: str) -> dict[str, Any]:
    """Role `elasticml-<cluster>-tenant-<tenant>`: its own prefix of the bucket, and nothing else."""
    bucket, prefix = f"arn:aws:s3:::{d.bucket}", f"tenants/{tenant}/"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "OwnPrefix", "Effect": "Allow", "Action": OBJECT_ACTIONS, "Resource": f"{bucket}/{prefix}*"},
        {"Sid": "ListOwnPrefix", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket,
         "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}}},
        {"Sid": "BucketRegion", "Effect": "Allow", "Action": ["s3:GetBucketLocation"], "Resource": bucket},
        use_key(d),
    ]}


def tenant_trust(d: ClusterDefinition) -> dict[str, Any]:
    """Every tenant role's trust policy: only the head (its scheduler) may assume it, for at most 12 h."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "TheSchedulerVends", "Effect": "Allow", "Action": "sts:AssumeRole",
         "Principal": {"AWS": f"arn:aws:iam::{d.account_id}:role/{node_role(d, 'head')}"}}]}


def kms_key(d: ClusterDefinition) -> str:
    return f"arn:aws:kms:{d.region}:{d.account_id}:alias/elasticml-{d.name}"


def bucket_encryption(d: ClusterDefinition) -> dict[str, Any]:
    """`aws s3api put-bucket-encryption --bucket B --server-side-encryption-configuration file://...`: every
    object written is encrypted with the cluster's KMS key (pyarrow's S3 writes cannot ask for SSE
    themselves, so the bucket does it for them)."""
    return {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kms_key(d)},
                       "BucketKeyEnabled": True}]}


def bucket_policy(d: ClusterDefinition) -> dict[str, Any]:
    """`aws s3api put-bucket-policy`: no request without TLS, and no object written with any encryption
    but the cluster's KMS key (a request that names none gets the bucket's default, which is that key)."""
    bucket = f"arn:aws:s3:::{d.bucket}"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "DenyWithoutTLS", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
         "Resource": [bucket, f"{bucket}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
        {"Sid": "DenyOtherEncryption", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
         "Resource": f"{bucket}/*",
         "Condition": {"StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption": "aws:kms"}}},
        {"Sid": "DenyOtherKeys", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
         "Resource": f"{bucket}/*",
         "Condition": {"StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption-aws-kms-key-id": kms_key(d)}}},
    ]}


def worker_policy(d: ClusterDefinition) -> dict[str, Any]:
    """Workers may read and write the checkpoint bucket, and nothing more."""
    return {"Version": "2012-10-17", "Statement": bucket_statements(d)}


def head_policy(d: ClusterDefinition) -> dict[str, Any]:
    """The head: the bucket, plus what Ray's autoscaler and the scheduler's price adaptor need."""
    cluster = f"elasticml-{d.name}"
    return {"Version": "2012-10-17", "Statement": bucket_statements(d) + [
        # Instances only with this cluster's tag (Ray's launcher puts ray-cluster-name on every instance it
        # launches), and only those may be stopped, terminated or re-tagged: the head cannot touch
        # another cluster's or anyone else's instances in the account.
        # The nodes' AMIs are public SSM parameters that EC2 resolves at launch (resolve:ssm:...).
        {"Sid": "ResolvePublicAmiParameters", "Effect": "Allow", "Action": ["ssm:GetParameters"],
         "Resource": f"arn:aws:ssm:{d.region}::parameter/aws/service/*"},
        {"Sid": "LaunchOnlyTaggedForThisCluster", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": f"arn:aws:ec2:{d.region}:{d.account_id}:instance/*",
         "Condition": {"StringEquals": {f"aws:RequestTag/{RAY_CLUSTER_TAG}": cluster}}},
        # A spot launch (InstanceMarketOptions) makes a spot-instances-request, which RunInstances must
        # be allowed to create too, or every spot launch is denied.
        {"Sid": "LaunchWithTheseParts", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": [f"arn:aws:ec2:{d.region}:{d.account_id}:{kind}/*" for kind in
                      ("volume", "network-interface", "subnet", "security-group", "key-pair", "capacity-reservation",
                       "spot-instances-request")]
         + [f"arn:aws:ec2:{d.region}::image/*"]},
        # EC2 launches spot instances through the account's spot service-linked role; where it is missing,
        # EC2 makes it during the launch with the caller's rights, or the launch fails: that role only.
        {"Sid": "SpotServiceLinkedRole", "Effect": "Allow", "Action": ["iam:CreateServiceLinkedRole"],
         "Resource": f"arn:aws:iam::{d.account_id}:role/aws-service-role/{SPOT_SERVICE}/AWSServiceRoleForEC2Spot",
         "Condition": {"StringLike": {"iam:AWSServiceName": SPOT_SERVICE}}},
        {"Sid": "TagAtLaunch", "Effect": "Allow", "Action": ["ec2:CreateTags"],
         "Resource": f"arn:aws:ec2:{d.region}:{d.account_id}:instance/*",
         "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}}},
        {"Sid": "ManageOnlyThisClustersInstances", "Effect": "Allow",
         "Action": ["ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances", "ec2:CreateTags"],
         "Resource": f"arn:aws:ec2:{d.region}:{d.account_id}:instance/*",
         "Condition": {"StringEquals": {f"ec2:ResourceTag/{RAY_CLUSTER_TAG}": cluster}}},
        {"Sid": "Describe", "Effect": "Allow",  # EC2's Describe calls cannot be scoped to resources
         "Action": ["ec2:DescribeInstances", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeImages",
                    "ec2:DescribeCapacityReservations", "ec2:DescribeSpotPriceHistory", "ec2:GetSpotPlacementScores"],
         "Resource": "*", "Condition": {"StringEquals": {"aws:RequestedRegion": d.region}}},
        # Launching with the worker's instance profile passes the role in it (named alike, `node_role`).
        {"Sid": "PassWorkerRole", "Effect": "Allow", "Action": ["iam:PassRole"],
         "Resource": f"arn:aws:iam::{d.account_id}:role/{node_role(d, 'worker')}",
         "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}},
        # The scheduler vends each tenant short-lived credentials of its own role (tenant_storage.py).
        {"Sid": "VendTenantCredentials", "Effect": "Allow", "Action": ["sts:AssumeRole"],
         "Resource": f"arn:aws:iam::{d.account_id}:role/elasticml-{d.name}-tenant-*"},
    ]}
