"""Where data and checkpoints live: a local path or an `s3://` URI, behind pyarrow's filesystems.

`filesystem_for(uri)` returns a pyarrow FileSystem and the path inside it. S3
goes through pyarrow's S3FileSystem (no boto3 on the data path); its endpoint
is configurable, so an S3-compatible server works the same as AWS:
`ELASTICML_S3_ENDPOINT` (or `AWS_ENDPOINT_URL`), with credentials and region
from the usual AWS variables.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

from elasticml.atomic import write_atomic


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


@dataclass(frozen=True)
class S3Credentials:
    """Short-lived S3 credentials confined to one prefix (a tenant's, vended by the scheduler:
    scheduler/tenant_storage.py). The secret never shows in a repr or a log line."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: float
    """Unix time after which they no longer work."""
    prefix: str
    """`bucket/tenants/NAME/`: the only keys they reach."""

    def cover(self, uri: str) -> bool:
        return uri.startswith("s3://") and f"{uri.removeprefix('s3://').rstrip('/')}/".startswith(self.prefix)


_credentials: list[S3Credentials] = []


def use_credentials(creds: list[S3Credentials]) -> None:
    """From now on, in this process, S3 URIs under each one's prefix are reached with it (a tenant's
    job and its workers); an empty list forgets them."""
    _credentials[:] = list(creds)


def installed_credentials() -> list[S3Credentials]:
    return list(_credentials)


class _PrefixHandler(pafs.FileSystemHandler):
    """A tenant's S3 through pyarrow, without the bucket-level call its credentials may not make.

    pyarrow's S3 `create_dir` first asks whether the bucket exists (HeadBucket, which IAM authorizes
    as a ListBucket of no prefix: a listing of every tenant's keys, which a tenant's role is rightly
    denied). S3 has no directories, so creating one is nothing here; everything else is S3's own.
    """

    def __init__(self, fs: pafs.S3FileSystem) -> None:
        self.fs = fs

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _PrefixHandler) and self.fs.equals(other.fs)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "elasticml-s3-prefix"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        return None

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("a tenant's S3 access never empties a bucket")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> object:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> object:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: object) -> object:
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: object) -> object:
        return self.fs.open_append_stream(path, metadata=metadata)


def s3_filesystem(uri: str = "") -> pafs.FileSystem:
    endpoint = os.environ.get("ELASTICML_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, object] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    vended = next((c for c in _credentials if c.cover(uri)), None)
    if vended is not None:
        kwargs.update(access_key=vended.access_key_id, secret_key=vended.secret_access_key,
                      session_token=vended.session_token)
        return pafs.PyFileSystem(_PrefixHandler(pafs.S3FileSystem(**kwargs)))
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs.update(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
    return pafs.S3FileSystem(**kwargs)


def bucket_region(uri: str) -> str | None:
    """The AWS region an s3:// URI's bucket is in (S3's GetBucketLocation); None for a local path."""
    if not uri.startswith("s3://"):
        return None
    from elasticml.aws_client import client as aws_client
    from elasticml.aws_client import s3_endpoint
    from elasticml.errors import DataError

    bucket = uri.removeprefix("s3://").split("/", 1)[0]
    client = aws_client("s3", endpoint_url=s3_endpoint())
    try:
        where = client.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    except Exception as exc:  # no such bucket, no permission: a region that cannot be told is not allowed
        raise DataError(f"cannot tell which region s3://{bucket} is in: {type(exc).__name__}") from None
    return where or "us-east-1"  # S3 answers None for us-east-1


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// URI."""
    if uri.startswith("s3://"):
        return s3_filesystem(uri), uri.removeprefix("s3://").rstrip("/")
    if uri.startswith("file://"):
        uri = uri.removeprefix("file://")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def read_text(uri: str) -> str:
    fs, path = filesystem_for(uri)
    with fs.open_input_stream(path) as fh:
        return fh.read().decode()


def exists(uri: str) -> bool:
    fs, path = filesystem_for(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_text_atomic(uri: str, text: str) -> None:
    """Replace a small text file so that readers see the old or the new content, never a part.

    Local: a temporary file in the same folder, fsynced, then renamed over the target. S3: one PUT,
    which becomes visible only when complete.
    """
    data = text.encode()
    if is_remote(uri):
        fs, path = filesystem_for(uri)
        with fs.open_output_stream(path) as fh:
            fh.write(data)
        return
    write_atomic(Path(uri.removeprefix("file://")).expanduser(), data)


def download_dir(uri: str) -> Path:
    """A local copy of a remote folder (for loaders that need files); a local path is returned as is."""
    if not is_remote(uri):
        return Path(uri).expanduser()
    local = Path(tempfile.mkdtemp(prefix="elasticml-"))
    copy_tree(uri, str(local), desc=f"downloading {uri.rstrip('/').rsplit('/', 1)[-1]}")
    return local


COPY_CHUNK = 8 << 20
COPY_THREADS = 8


def list_files(uri: str) -> dict[str, int]:
    """Every file under a folder (local or s3://), as {path relative to it: size}; {} when there is none."""
    fs, root = filesystem_for(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {i.path[len(root):].lstrip("/"): i.size for i in infos if i.type == pafs.FileType.File}


def copy_tree(src: str, dst: str, *, desc: str, files: dict[str, int] | None = None) -> dict[str, str]:
    """Copy a folder's files (or `files`, relative path to size) from src to dst, local or s3:// either
    side, several at a time, with a progress bar in bytes. Returns each copied file's sha256, of the
    bytes as they were read."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    from elasticml import progress

    files = list_files(src) if files is None else files
    sfs, sroot = filesystem_for(src)
    dfs, droot = filesystem_for(dst)
    if not is_remote(dst):
        for folder in {str(Path(droot, name).parent) for name in files}:
            Path(folder).mkdir(parents=True, exist_ok=True)
    with progress.bar(desc, total=sum(files.values()), in_bytes=True) as shown:
        def one(name: str) -> tuple[str, str]:
            digest = hashlib.sha256()
            with sfs.open_input_stream(f"{sroot}/{name}") as fin, dfs.open_output_stream(f"{droot}/{name}") as fout:
                while chunk := fin.read(COPY_CHUNK):
                    digest.update(chunk)
                    fout.write(chunk)
                    shown.update(len(chunk))
            return name, digest.hexdigest()

        with ThreadPoolExecutor(max_workers=COPY_THREADS) as pool:
            return dict(pool.map(one, files))  # re-raises the first failure
