"""A real S3 API on loopback (moto's server) for the tests that read from or write to s3:// URIs
(tests/test_sources_anywhere.py, tests/test_upload_to.py), through pyarrow's S3FileSystem.

Ray's workers take the environment of the process that starts the test cluster (once per session,
after collection), so the credentials moto accepts are set when conftest imports this module, not
per test. Fake values: nothing here may reach a real cloud account."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs
from ray_head import free_port

os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_SESSION_TOKEN="testing",
                  AWS_EC2_METADATA_DISABLED="true")
BUCKET = "med42-data"


class S3:
    def __init__(self, port: int, fs: pafs.S3FileSystem):
        self.port, self.fs = port, fs

    def uri(self, key: str) -> str:
        """pyarrow's own URI options: no endpoint or region look-up leaves the machine."""
        return f"s3://{BUCKET}/{key}?endpoint_override=127.0.0.1:{self.port}&scheme=http&region=us-east-1"

    def upload(self, local: Path, key: str) -> None:
        """A file, or a directory tree, under s3://BUCKET/key."""
        if local.is_dir():
            pafs.copy_files(str(local), f"{BUCKET}/{key}", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)
        else:
            with self.fs.open_output_stream(f"{BUCKET}/{key}") as f:
                f.write(local.read_bytes())


def start_s3():
    """Generator: yields an S3 on 127.0.0.1 with BUCKET created, stops the server afterwards."""
    import pytest

    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                           allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    try:
        yield S3(port, fs)
    finally:
        server.stop()
