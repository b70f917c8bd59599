"""`check-iam`: a pass/fail smoke test of the bucket credentials, for CI."""

from __future__ import annotations

from typing import Optional

import typer

from apstorage.cli.app import JSON_OPTION, METRICS_OPTION, app, handle_errors
from apstorage.cli.output import Output, new_table, plural, record_metrics, retention_check, show_retention_check
from apstorage.text import printable

_MARKS = {
    "passed": ("✓", "green"),
    "failed": ("✗", "bold red"),
    "skipped": ("–", "dim"),
    "inconclusive": ("?", "yellow"),
}


@app.command("check-iam")
@handle_errors
def check_iam(
    prefix: str = typer.Option(
        "", "--prefix", help="Key prefix the probes go under, e.g. project/ (default: bucket root)."
    ),
    junit_xml: Optional[str] = typer.Option(
        None, "--junit-xml", metavar="PATH", help="Also write a JUnit XML report, one testcase per check."
    ),
    skip: Optional[str] = typer.Option(
        None, "--skip", metavar="NAME,..",
        help="Checks to leave out: list, put, get, list-versions, get-version, presign-get, "
        "presign-put, anonymous-denied, delete, delete-versions, clock.",
    ),
    metrics_file: Optional[str] = METRICS_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Smoke-test the bucket credentials (a CI gate).

    Exit 1 if any check fails.

    Runs list, put, get, list-versions, get-version, presign-get, presign-put,
    anonymous-denied, delete, delete-versions and clock in order, each naming the IAM
    permission it exercises, with a hint for each failure. The three version checks
    (s3:ListBucketVersions, s3:GetObjectVersion, s3:DeleteObjectVersion: what
    --purge-versions and restore need) run on a versioned bucket only; elsewhere they are
    skipped ("bucket is not versioned"). Probe objects are removed even when a check fails
    or the run is interrupted; on a versioned bucket every version and delete marker of
    them.
    Exit 0 all passed, 1 some failed, 3 configuration missing, 4 bucket missing (the run
    stops after list and writes nothing), 8 endpoint unreachable.
    """
    from apstorage.config import load_settings
    from apstorage.services.check_iam import (
        parse_skip, prepare_junit_path, run_checks, write_junit,
    )

    out = Output(json_out)
    names = parse_skip(skip)
    if junit_xml is not None:
        prepare_junit_path(junit_xml)
    with record_metrics(metrics_file, "check_iam") as metrics:
        settings = load_settings()
        with out.status("checking the bucket credentials…"):
            report = run_checks(settings, prefix=prefix, skip=sorted(names))
        if junit_xml:
            write_junit(report, junit_xml)
        if metrics is not None:
            for check in report.checks:
                if check.status in ("passed", "failed"):
                    metrics.set("check_passed", 1 if check.status == "passed" else 0,
                                "1 when the check passed, 0 when it failed (skipped and inconclusive checks are absent).",
                                check=check.name, permission=check.permission)
            metrics.set("failed_checks", len(report.failed), "Checks that failed in the last run.")
            metrics.set("reachable", 0 if report.unreachable else 1, "0 when the endpoint could not be reached.")
        _show(out, report, json_out, retention_check(settings))


def _show(out: Output, report, json_out: bool, check: dict[str, str] | None = None) -> None:
    from apstorage.services.check_iam import MISSING_BUCKET_HINT

    def render(console) -> None:
        from rich.text import Text

        table = new_table("", "check", "permission", "result", title=f"s3://{report.bucket}/{report.prefix}  ({report.endpoint})")
        for check in report.checks:
            mark, style = _MARKS[check.status]
            result = Text(printable(check.detail))
            if check.hint:
                result.append(f"\nhint: {check.hint}", style="yellow")
            table.add_row(Text(mark, style=style), check.name, check.permission, result)
        console.print(table)

    out.result({**report.to_json(), "retentionCheck": check}, render)
    show_retention_check(out, check)
    for key in report.leftover:
        if key.endswith(")"):  # a version or delete marker, with what happened to it
            out.warn(f"probe left behind: {key}")
        else:
            out.warn(f"probe object left behind (these credentials could not delete it): {key}")
    for warning in report.warnings:
        out.warn(warning)
    failed = [c.name for c in report.failed]
    if report.unreachable is not None:
        out.error(report.unreachable, "check AP_S3_ENDPOINT and the network")
    elif report.missing_bucket is not None:
        out.error(report.missing_bucket, MISSING_BUCKET_HINT)
    elif failed:
        if not json_out:  # one unwrapped line per hint, easy to copy from a CI log
            for check in report.failed:
                if check.hint:
                    out.info(f"{check.name}: {check.hint}")
        out.info(f"{len(failed)} of {plural(len(report.checks), 'check')} failed: {', '.join(failed)}")
    elif not json_out:
        passed = sum(1 for c in report.checks if c.ok)
        out.info("1 check passed" if passed == 1 else f"all {passed:,} checks passed")
    if report.exit_code:
        raise typer.Exit(report.exit_code)
