"""Pre-signing and check-iam against a private SeaweedFS.

Figures:
- the worker upload flow: `apstorage presign --from-json` for N files (one process: N
  rows in one transaction + N PUT URLs), wall time and URLs per second;
- signing alone, in process: S3Store.presign_put / presign_get per second;
- the peer: `aws s3 presign` (GET only — aws-cli cannot pre-sign uploads), one process
  per URL as a script would call it, and the ratio per URL;
- a full `apstorage check-iam` run (8 checks, probes removed), wall time.

Run from the repo root:  python bench/presign.py [--files 1000] [--aws-urls 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import seaweedfs_server  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000, help="files in the --from-json batch")
    parser.add_argument("--aws-urls", type=int, default=10, help="`aws s3 presign` calls to time")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ap-bench-presign-"))
    try:
        with seaweedfs_server() as s3:
            bucket = f"bench-{secrets.token_hex(4)}"
            s3.client().create_bucket(Bucket=bucket)
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("AP_")},
                "AP_CONFIG_PATH": str(tmp / "home"),
                **s3.ap_env(bucket),
            }
            batch = tmp / "batch.json"
            batch.write_text(json.dumps({"files": [
                {"fileName": f"step-{i}.json", "fileSize": 1000 + i} for i in range(args.files)
            ]}))
            cmd = [sys.executable, "-m", "apstorage", "presign", "--from-json", str(batch),
                   "--type", "FLOW_STEP_FILE", "--project", "bench", "--json"]

            flow = []
            for _ in range(args.repeat):
                def run_flow() -> None:
                    done = subprocess.run(cmd, env=env, capture_output=True, check=True)
                    assert len(json.loads(done.stdout)["files"]) == args.files
                flow.append(timed(run_flow))
            print(f"presign --from-json, {args.files} files (one process): {spread(flow)} s; "
                  f"{args.files / statistics.median(flow):.0f} URLs+rows/s")

            from apstorage.config import load_settings
            from apstorage.stores.s3 import S3Store

            store = S3Store(load_settings(environ=env, dotenv_path="/nonexistent"))
            n = 2000
            put_rate = [n / timed(lambda: [store.presign_put(f"k/{i}", 3600, content_length=i,
                                                             tags={"ap-retention": "execution"})
                                          for i in range(n)]) for _ in range(args.repeat)]
            get_rate = [n / timed(lambda: [store.presign_get(f"k/{i}", 3600,
                                                             content_disposition='attachment; filename="a"')
                                          for i in range(n)]) for _ in range(args.repeat)]
            print(f"in-process signing: presign_put {spread(put_rate)} /s; presign_get {spread(get_rate)} /s")

            aws = shutil.which("aws")
            if aws:
                aws_env = {**env, "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                           "AWS_DEFAULT_REGION": s3.region}
                per_url = []
                for _ in range(args.repeat):
                    total = timed(lambda: [subprocess.run(
                        [aws, "s3", "presign", f"s3://{bucket}/k/{i}", "--endpoint-url", s3.endpoint,
                         "--expires-in", "3600"], env=aws_env, capture_output=True, check=True)
                        for i in range(args.aws_urls)])
                    per_url.append(total / args.aws_urls)
                ours = statistics.median(flow) / args.files
                print(f"aws s3 presign (GET only), one process per URL: {spread(per_url)} s per URL; "
                      f"apstorage batch per URL {ours * 1000:.2f} ms -> {statistics.median(per_url) / ours:.0f}x")
            else:
                print("aws not installed: peer figure skipped")

            check = []
            for _ in range(args.repeat):
                def run_check() -> None:
                    done = subprocess.run([sys.executable, "-m", "apstorage", "check-iam", "--json"],
                                          env=env, capture_output=True)
                    assert done.returncode == 0, done.stdout + done.stderr
                check.append(timed(run_check))
            print(f"check-iam, 8 checks, full credentials: {spread(check)} s")
            store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
