#!/usr/bin/env python3
"""Many writers on one table in Azure-like storage latency: `bench-writers` against Azurite behind the test suite's
fault proxy, which delays every storage request (30 ms by default, about what ADLS Gen2 answers in).

    scripts/setup > /dev/null   # the venv and Azurite
    .venv/bin/python bench/writers_latency.py --writers 1,4,16,32,64 --seconds 5 --delay-ms 30
    .venv/bin/python bench/writers_latency.py --writers 1,4,16,32,64 --seconds 5 --rate 10000

Builds the release `bench-writers` (honouring CARGO_TARGET_DIR) unless `--no-build`, starts Azurite
(AZURITE_BLOB_BIN) and the proxy on 127.0.0.1, and prints bench-writers' table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from azure.storage.blob import BlobServiceClient  # noqa: E402
from conftest import Azurite  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writers", default="1,4,16,32,64", help="writer counts, in order")
    ap.add_argument("--seconds", type=int, default=5, help="seconds per writer count")
    ap.add_argument("--batch", type=int, default=500, help="events per commit")
    ap.add_argument("--rate", type=float, help="events/s offered to the table, split across the writers, each "
                    "committing what arrived at most once per 200 ms (bench-writers --rate)")
    ap.add_argument("--delay-ms", type=float, default=30.0, help="delay the proxy adds to every storage request")
    ap.add_argument("--no-build", action="store_true", help="use the release bench-writers already built")
    args = ap.parse_args()

    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "segment-delta-bench", "--bin", "bench-writers"],
                       cwd=REPO, check=True)
    exe = target / "release" / "bench-writers"

    with tempfile.TemporaryDirectory(prefix="segment-delta-writers-") as work:
        azurite = Azurite(Path(work)).start()
        try:
            BlobServiceClient.from_connection_string(azurite.connection_string).create_container("bench")
            proxy = FaultProxy(azurite.port).start()
            proxy.set("delay", delay_s=args.delay_ms / 1000)
            env = dict(os.environ, SEGMENT_DELTA_STORAGE_EMULATOR="true", AZURITE_BLOB_STORAGE_URL=proxy.url)
            print(f"Azurite behind a proxy adding {args.delay_ms:g} ms to every storage request", flush=True)
            subprocess.run([str(exe), "--lake", "az://bench/writers", "--writers", args.writers,
                            "--seconds", str(args.seconds), "--batch", str(args.batch),
                            *(["--rate", str(args.rate)] if args.rate else [])], env=env, check=True)
        finally:
            azurite.stop()


if __name__ == "__main__":
    main()
