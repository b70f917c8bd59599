"""The mistakes a user makes in their first minutes: each prints one line saying what to do,
exits with the documented code, and never shows a traceback.

They run as real processes in tests/test_bad_input.py's table, with its checks (one stderr
line, the exit code, no traceback, no secret, nothing written)."""

from __future__ import annotations

S3_UNREACHABLE = {"AP_S3_BUCKET": "bucket", "AP_S3_ACCESS_KEY_ID": "k", "AP_S3_SECRET_ACCESS_KEY": "do-not-print-me"}

MISTAKES = [
    # (name, args, env, exit code, words the one line must contain)
    ("missing bucket variable", ["put", "IN", "-t", "FLOW_RUN_LOG", "--project", "p"],
     {"AP_FILE_STORAGE_LOCATION": "S3"}, 3, ["AP_S3_BUCKET"]),
    ("bad boolean", ["config"], {"AP_S3_USE_IRSA": "yes"}, 3, ["AP_S3_USE_IRSA", "true or false"]),
    ("unreachable endpoint", ["put", "IN", "-t", "FLOW_RUN_LOG", "--project", "p"],
     {"AP_FILE_STORAGE_LOCATION": "S3", "AP_S3_ENDPOINT": "http://127.0.0.1:PORT", **S3_UNREACHABLE}, 8, ["127.0.0.1:PORT"]),
    ("unreachable postgres", ["get", "abc"], {"AP_POSTGRES_URL": "postgresql://u:pw-secret@127.0.0.1:PORT/db"}, 8, ["127.0.0.1:PORT"]),
    ("unknown id", ["get", "nosuchfileid"], {}, 4, ["nosuchfileid"]),
    ("unknown type", ["put", "IN", "-t", "FLOW_LOG", "--project", "p"], {}, 2, ["--type", "FLOW_RUN_LOG"]),
    ("file too large", ["put", "BIG", "-t", "FLOW_RUN_LOG", "--project", "p"], {"AP_MAX_FILE_SIZE_MB": "1"}, 7, ["AP_MAX_FILE_SIZE_MB"]),
    ("missing input path", ["put", "/no/such/file", "-t", "FLOW_RUN_LOG", "--project", "p"], {}, 4, ["/no/such/file"]),
    ("input path is a folder", ["put", "DIR", "-t", "FLOW_RUN_LOG", "--project", "p"], {}, 2, ["directory"]),
    ("bad duration", ["presign", "abc", "--expires", "soon"], {}, 2, ["--expires"]),
    ("too long an expiry", ["presign", "abc", "--expires", "8d"], {}, 2, ["7 days"]),
    ("permanent type to sweep", ["sweep-expired", "--types", "PLATFORM_ASSET"], {}, 2, ["PLATFORM_ASSET"]),
    ("bad location", ["get", "x"], {"AP_FILE_STORAGE_LOCATION": "GCS"}, 3, ["AP_FILE_STORAGE_LOCATION", "DB, S3, LOCAL"]),
    ("unknown flag", ["put", "--colour"], {}, 2, ["--colour"]),
]
