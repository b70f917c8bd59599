"""Start-up time: `apstorage --help` against `aws --version`, side by side, same interpreter.

Target (issue 2): apstorage's median wall time <= 0.25 x aws-cli's. Also checks that
`--help` imports neither boto3 nor psycopg.

    python bench/startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def timed(cmd: list[str], runs: int) -> float:
    subprocess.run(cmd, capture_output=True, check=True)  # warm the page cache
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    probe = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "apstorage", "--help"],
        capture_output=True, text=True, check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in probe.stderr.splitlines()}
    heavy = sorted(imported & {"boto3", "botocore", "psycopg"})
    print(f"heavy modules imported by --help: {heavy or 'none'}")

    ours_cmd = [sys.executable, "-m", "apstorage", "--help"]
    aws_exe = shutil.which("aws")
    aws_cmd = [sys.executable, "-m", "awscli", "--version"]
    ours = timed(ours_cmd, args.runs)
    aws = timed(aws_cmd, args.runs)
    ratio = ours / aws
    print(f"apstorage --help : {ours * 1000:7.1f} ms (median of {args.runs})")
    print(f"aws --version    : {aws * 1000:7.1f} ms (median of {args.runs}; {aws_exe or 'python -m awscli'})")
    print(f"ratio            : {ratio:.2f} (target <= 0.25)")
    return 0 if ratio <= 0.25 and not heavy else 1


if __name__ == "__main__":
    sys.exit(main())
