"""`config` and `init`."""

from __future__ import annotations


from apstorage.cli.app import JSON_OPTION, app, handle_errors
from apstorage.cli.output import Output, plural, retention_check, show_retention_check


@app.command("config")
@handle_errors
def config_cmd(json_out: bool = JSON_OPTION) -> None:
    """Show the effective settings, secrets redacted.

    One row per AP_* variable apstorage reads: its value (secrets shown as ********) and
    where it came from (environment, the .env file, or default). Then one line when
    AP_EXECUTION_DATA_RETENTION_DAYS is not longer than AP_PAUSED_FLOW_TIMEOUT_DAYS: a
    warning when shorter, a note when equal (the platform's defaults, 30 and 30).
    """
    from apstorage.config import load_settings

    settings = load_settings()
    rows = settings.describe()

    def render(console) -> None:
        # Plain aligned columns, not a Rich table: nothing is cut or wrapped at any width.
        shown = [(r["name"], "" if r["value"] is None else _text(r["value"]), r["source"]) for r in rows]
        name_w = max(len(n) for n, _, _ in [("variable", "", ""), *shown])
        value_w = max(len(v) for _, v, _ in [("", "value", ""), *shown])
        for name, value, source in [("variable", "value", "source"), *shown]:
            console.print(f"{name:<{name_w}}  {value:<{value_w}}  {source}".rstrip(), soft_wrap=True)

    out = Output(json_out)
    check = retention_check(settings)
    out.result({"settings": rows, "retentionCheck": check}, render)
    show_retention_check(out, check)


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@app.command()
@handle_errors
def init(json_out: bool = JSON_OPTION) -> None:
    """Create the file table and its indexes when missing.

    An existing table is never altered; missing indexes are reported.
    """
    from apstorage.catalog import open_catalog
    from apstorage.config import load_settings

    settings = load_settings()
    with open_catalog(settings, create=False) as catalog:
        report = catalog.init_schema()
    out = Output(json_out)

    def render(console) -> None:
        if report.created_table:
            console.print(f"created the file table and {plural(len(report.created_indexes), 'index', 'indexes')} in {report.target}", markup=False)
        else:
            console.print(f"the file table already exists in {report.target}; left unchanged", markup=False)
        for name in report.missing_indexes:
            out.warn(f"index {name} is missing; sweeps and listings may scan the table")
        for index in report.optional_indexes:
            out.note(
                f"optional index {index['name']} is not there (it makes the shared-key checks of "
                f"sweep-expired and migrate-to-s3 index scans on a large table); to add it: {index['sql']}"
            )

    out.result(report.to_json(), render)
