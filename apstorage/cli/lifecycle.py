"""`lifecycle apply` and `lifecycle show`."""

from __future__ import annotations

from typing import Optional

import typer

from apstorage.cli.app import DRY_RUN_OPTION, JSON_OPTION, app, handle_errors
from apstorage.cli.output import Output, new_table, plural, retention_check, show_retention_check
from apstorage.text import printable  # rule ids and filters come from the bucket

lifecycle_app = typer.Typer(
    help=(
        "Bucket lifecycle rules from the retention settings.\n\n"
        "Rules are derived from the retention settings and merged into the bucket's "
        "configuration by rule ID."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(lifecycle_app, name="lifecycle")

_CHANGE_STYLE = {"added": "green", "updated": "yellow", "kept": "dim", "removed": "red"}


@lifecycle_app.command("apply")
@handle_errors
def apply_cmd(
    retention_days: Optional[int] = typer.Option(
        None, "--retention-days", min=1, max=36500, metavar="N",
        help="Days execution data is kept (default: AP_EXECUTION_DATA_RETENTION_DAYS; "
        "a shorter expiry than that + 1 day is refused).",
    ),
    grace_days: int = typer.Option(
        1, "--grace-days", min=0, max=36500, metavar="N",
        help="Extra days before the bucket expires tagged objects, so the catalog sweep "
        "deletes them first.",
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Remove rules apstorage did not create (default: keep them)."
    ),
    noncurrent_days: int = typer.Option(
        7, "--noncurrent-days", min=1, max=36500, metavar="N",
        help="On a versioned bucket: days a deleted (noncurrent) version of execution data "
        "is kept, so `apstorage restore` can bring it back, before the bucket removes it.",
    ),
    dry_run: bool = DRY_RUN_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Merge apstorage's lifecycle rules into the bucket's configuration.

    Adds or updates two rules by ID: apstorage-expire-execution-data (objects tagged
    ap-retention=execution expire after retention + grace days) and
    apstorage-abort-incomplete-multipart (incomplete multipart uploads are aborted after
    1 day). Rules with other IDs are kept unchanged unless --replace. Shows the diff;
    writes only when something changed.

    On a versioned bucket (versioning Enabled or Suspended), where a delete only adds a
    delete marker, two more: apstorage-expire-noncurrent-execution-data (noncurrent
    versions of tagged objects expire --noncurrent-days after they became noncurrent)
    and apstorage-remove-expired-delete-markers (a delete marker with no version left is
    removed). An unversioned bucket gets the first two only.

    The expiry is never shorter than the catalog's retention
    (AP_EXECUTION_DATA_RETENTION_DAYS) + 1 day: a shorter one is refused (exit 2), since
    the bucket would delete objects whose rows still exist. Kept rules that expire
    apstorage's objects too soon are flagged.
    """
    from apstorage.services.context import Storage
    from apstorage.services.lifecycle import apply_lifecycle

    out = Output(json_out)
    with Storage() as storage:
        plan = apply_lifecycle(
            storage,
            retention_days=retention_days,
            grace_days=grace_days,
            replace=replace,
            dry_run=dry_run,
            noncurrent_days=noncurrent_days,
        )

    def render(console) -> None:
        from rich.text import Text

        from apstorage.services.lifecycle import describe_actions, describe_filter

        table = new_table("change", "rule", "ours", "filter", "action", title=f"s3://{plan.bucket}")
        for c in plan.changes:
            rule = c.after or c.before or {}
            old = c.before if c.change == "updated" and c.before else rule
            table.add_row(
                Text(c.change, style=_CHANGE_STYLE[c.change]),
                Text(printable(c.id)),
                "yes" if c.ours else "",
                Text(printable(old_to_new(describe_filter(old), describe_filter(rule)))),
                Text(printable(old_to_new(describe_actions(old), describe_actions(rule)))),
            )
        console.print(table)

    out.result(plan.to_json(), render)
    for rule_id, problem in plan.problems:
        out.warn(f"rule {rule_id!r} {problem}")
    versioning = plan.versioning
    if versioning is not None and versioning.unknown:
        # refused or unreadable: the bucket may be versioned, so its rules are planned too
        out.warn(f"{versioning.note}: the bucket may be versioned, so the noncurrent-version rules are included")
    if json_out:
        return
    if plan.versioned:
        assert versioning is not None
        out.info(
            f"bucket {plan.bucket} is versioned ({versioning.status or 'state unknown'}): noncurrent versions of execution "
            f"data are kept {plural(plan.noncurrent_days, 'day')} (restorable), then removed; "
            "expired delete markers are removed"
        )
    counts = ", ".join(
        f"{len(ids)} {name}"
        for name, ids in (("added", plan.added), ("updated", plan.updated),
                          ("kept", plan.kept), ("removed", plan.removed))
        if ids
    )
    if not plan.changed:
        out.info(f"no change: the lifecycle configuration of {plan.bucket} is up to date ({counts})")
    elif dry_run:
        out.info(f"dry run: would write {plural(len(plan.rules), 'rule')} to {plan.bucket} ({counts}); nothing written")
    else:
        out.info(f"wrote {plural(len(plan.rules), 'rule')} to {plan.bucket} ({counts})")


@lifecycle_app.command("show")
@handle_errors
def show_cmd(json_out: bool = JSON_OPTION) -> None:
    """List the bucket's lifecycle rules; apstorage's own are marked.

    A rule that would expire apstorage's objects before the catalog lets them go
    (sooner than AP_EXECUTION_DATA_RETENTION_DAYS + 1 day, or objects that never expire
    by age) is flagged "too short", with a warning line on stderr. A retention not longer
    than AP_PAUSED_FLOW_TIMEOUT_DAYS is said in one more line (a note when equal).

    Shows the bucket's versioning state; a versioned bucket on which no rule expires
    noncurrent versions of execution data is warned about (its deleted bytes are kept
    forever: run lifecycle apply).
    """
    from apstorage.services.context import Storage
    from apstorage.services.lifecycle import show_lifecycle

    out = Output(json_out)
    with Storage() as storage:
        view = show_lifecycle(storage)
    data = view.to_json()

    def render(console) -> None:
        from rich.text import Text

        console.print(f"versioning: {_versioning_words(view.versioning)}", markup=False)
        if not view.rules:
            console.print(f"bucket {view.bucket} has no lifecycle rules", markup=False)
            return
        table = new_table("rule", "ours", "status", "filter", "action", "check", title=f"s3://{view.bucket}")
        for rule in data["rules"]:
            table.add_row(
                Text(printable(rule["id"])),
                "yes" if rule["ours"] else "",
                "enabled" if rule["enabled"] else "disabled",
                Text(printable(rule["filter"])),
                Text(printable(rule["actions"])),
                Text("too short", style="bold red") if rule["tooShort"] else "",
            )
        console.print(table)

    check = retention_check(storage.settings)
    out.result({**data, "retentionCheck": check}, render)
    for rule_id, problem in view.problems:
        out.warn(f"rule {rule_id!r} {problem}")
    if view.versions_kept_forever:
        status = view.versioning.status if view.versioning is not None else ""
        out.warn(
            f"bucket {view.bucket} is versioned ({status}) and no lifecycle rule expires noncurrent "
            "versions of execution data: every deleted object keeps its bytes forever; "
            f"run `apstorage lifecycle apply` (adds {', '.join(data['missingVersionRules']) or 'the noncurrent-version rules'})"
        )
    if not json_out and view.missing:
        out.info(
            f"missing apstorage rules: {', '.join(view.missing)}; run `apstorage lifecycle apply`"
        )
    show_retention_check(out, check)


def _versioning_words(versioning) -> str:
    """``Enabled``, ``Suspended``, ``not enabled``, or what the store answered."""
    if versioning is None or (not versioning.status and not versioning.note):
        return "not enabled"
    if versioning.status:
        return versioning.status
    return f"unknown ({versioning.note})"


def old_to_new(old: str, new: str) -> str:
    """What an updated rule changed: the words both sides share stay once, the part that
    changed shows old → new. A number changed keeps its unit on both sides, so each side is
    pluralised on its own: ``expire after 31 days → 45 days``, ``expire noncurrent versions
    after 2 days → 1 day``. Actions (``; ``-separated) are compared one by one; when an
    action was added or removed both sides are shown whole."""
    if old == new:
        return new
    a_parts, b_parts = old.split("; "), new.split("; ")
    if len(a_parts) != len(b_parts):
        return f"{old} → {new}"
    return "; ".join(_one_to_one(x, y) for x, y in zip(a_parts, b_parts))


def _one_to_one(old: str, new: str) -> str:
    if old == new:
        return new
    a, b = old.split(" "), new.split(" ")
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    if tail and (_is_number(a[len(a) - tail - 1]) or _is_number(b[len(b) - tail - 1])):
        tail -= 1  # the unit after a changed number goes with it, on both sides
    was, now = " ".join(a[head:len(a) - tail]), " ".join(b[head:len(b) - tail])
    if not was or not now:  # words added or removed: show both whole
        return f"{old} → {new}"
    return " ".join(part for part in (" ".join(a[:head]), f"{was} → {now}", " ".join(a[len(a) - tail:])) if part)


def _is_number(word: str) -> bool:
    return word.replace(",", "").isdigit()
