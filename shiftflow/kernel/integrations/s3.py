"""The ``s3`` integration: credentials for an S3-compatible bucket (artifacts of a workspace).

Test: ``HeadBucket`` through boto3 (the ``s3`` extra): it proves the credentials may
reach the bucket and reads nothing. A custom ``endpoint_url`` (MinIO, Ceph...) obeys the
address rules of the HTTP tool; like ``email.send``'s SMTP host it is checked by name,
then resolved again by the client when it connects.
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel.errors import PermanentError, ToolError, ToolUnavailable
from shiftflow.kernel.integrations.base import CheckContext, CheckResult, Integration, RateLimits, passed
from shiftflow.kernel.integrations.secrets import secret
from shiftflow.kernel.tools.http import check_destination

CREDENTIALS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["bucket", "access_key_id", "secret_access_key"],
    "properties": {
        "bucket": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"},
        "region": {"type": "string", "pattern": r"^[a-z0-9-]{1,50}$", "default": "us-east-1"},
        "endpoint_url": {"type": "string", "pattern": r"^https?://[^\s?#]+$", "maxLength": 2048,
                         "description": "An S3-compatible server; empty for AWS itself."},
        "prefix": {"type": "string", "maxLength": 512, "description": "A key prefix inside the bucket."},
        "access_key_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "secret_access_key": secret({"type": "string", "minLength": 1, "maxLength": 1024}),
        "session_token": secret({"type": "string", "maxLength": 8192}),
    },
}


def client_for(credentials: dict[str, Any], *, timeout: float, allow_private: bool) -> Any:
    """A boto3 S3 client for the connection (path-style addressing on a custom endpoint).

    Raises:
        PermanentError: boto3 is not installed.
        ToolError: the endpoint's address is refused.
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise PermanentError("the s3 integration needs boto3: pip install 'shiftflow[s3]'") from None
    endpoint = credentials.get("endpoint_url") or None
    if endpoint:
        check_destination(endpoint, allow_private=allow_private)
    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1, "mode": "standard"},
                    s3={"addressing_style": "path" if endpoint else "auto"})
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=credentials.get("region") or "us-east-1",
        aws_access_key_id=credentials["access_key_id"], aws_secret_access_key=credentials["secret_access_key"],
        aws_session_token=credentials.get("session_token") or None, config=config,
    )


def check(credentials: dict[str, Any], ctx: CheckContext) -> CheckResult:
    """``HeadBucket``; see the module docstring."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = client_for(credentials, timeout=ctx.timeout, allow_private=ctx.allow_private)
    bucket = credentials["bucket"]
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(exc.response.get("Error", {}).get("Code", "")) or str(status)
        if status == 404 or code in ("NoSuchBucket", "NotFound"):
            raise ToolError(f"S3: bucket {bucket!r} does not exist") from None
        if status in (401, 403):
            raise ToolError(f"S3: access to bucket {bucket!r} refused ({code}): wrong keys or no permission") from None
        if status >= 500 or status == 429 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable"):
            raise ToolUnavailable(f"S3: HeadBucket answered {code}") from None
        raise ToolError(f"S3: HeadBucket answered {code}") from None
    except BotoCoreError as exc:  # connection refused, timeouts, closed connections
        raise ToolUnavailable(f"S3: {type(exc).__name__}: {exc}") from None
    finally:
        client.close()
    where = credentials.get("endpoint_url") or f"AWS {credentials.get('region') or 'us-east-1'}"
    return passed(f"S3 bucket {bucket!r} at {where} is reachable with these keys", bucket=bucket)


INTEGRATION = Integration(
    key="s3",
    name="S3-compatible storage",
    description="A bucket on AWS S3 or an S3-compatible server (MinIO, Ceph...) for a workspace's files.",
    category="storage",
    auth_type="API_KEY",
    credentials_schema=CREDENTIALS_SCHEMA,
    test=check,
    # S3 itself allows thousands of requests a second per prefix; this only keeps one
    # runaway workflow from flooding a small self-hosted server.
    limits=RateLimits(per_second=50, burst=100),
    docs_url="https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadBucket.html",
)
