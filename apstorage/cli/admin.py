"""`config` and `init`."""

from __future__ import annotations


from apstorage.cli.app import JSON_OPTION, app, handle_errors
from apstorage.cli.output import Output


@app.command("config")
@handle_errors
def config_cmd(json_out: bool = JSON_OPTION) -> None:
    """Show the effective settings, secrets redacted.

    Each AP_* variable that was set is listed with where it came from (the environment or
    a .env file).
    """
    from apstorage.config import load_settings

    settings = load_settings()
    data = settings.redacted()

    def render(console) -> None:
        from rich.table import Table

        table = Table("setting", "value", "source")
        for key, value in data.items():
            table.add_row(key, "" if value is None else str(value), "")
        for var, source in sorted(settings.sources.items()):
            table.add_row(f"[dim]{var}[/dim]", "", source)
        console.print(table)

    out = Output(json_out)
    out.result({**data, "sources": settings.sources}, render)
    if settings.retention_race_warning:
        out.warn(settings.retention_race_warning)


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
            console.print(f"created the file table and {len(report.created_indexes)} indexes in {report.target}", markup=False)
        else:
            console.print(f"the file table already exists in {report.target}; left unchanged", markup=False)
        for name in report.missing_indexes:
            out.warn(f"index {name} is missing; sweeps and listings may scan the table")

    out.result(report.to_json(), render)
