"""Property-based tests (Hypothesis): random text, bytes and numbers for every flag and AP_*
variable, run through the CLI in-process (Typer's CliRunner).

Only the contract is asserted: the exit code is a documented one (0-8), no exception escapes,
no raw escape character reaches stderr, and no secret is printed. Examples are bounded so
the file stays fast; the table in tests/test_bad_input.py holds the cases these found.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from apstorage.cli import app
from apstorage.config import VARIABLES

DOCUMENTED = set(range(9))
SECRET = "prop-secret-0461"
EXAMPLES = settings(
    max_examples=int(os.environ.get("AP_TEST_EXAMPLES", "60")),  # raise it to search longer
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text of every kind: control characters, bidi overrides, surrogates are left out (the OS
# cannot pass them in argv or the environment).
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
NUMBERS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["0", "-1", "1", "7", "36500", "36501", "99999999", "9" * 40, "1_000", "\u0663", " 5 ", "1e3"]),
)
VALUE = st.one_of(TEXT, NUMBERS)
DURATION = st.one_of(VALUE, st.builds(lambda n, u: f"{n}{u}", st.integers(-5, 10**15), st.sampled_from("smhdx")))
ID = st.one_of(VALUE, st.text("0123456789ABCDEFabcdef_-\n", min_size=1, max_size=70))

# Every AP_* variable apstorage reads, with values chosen to be mostly wrong; endpoints never
# point anywhere but a closed local port, so nothing waits on the network.
ENV_VALUE = {name: VALUE for name in VARIABLES}
ENV_VALUE.update(
    AP_S3_ENDPOINT=st.one_of(TEXT.filter(lambda t: "://" not in t), st.just("http://127.0.0.1:9")),
    AP_POSTGRES_URL=st.one_of(
        TEXT.filter(lambda t: not t.lower().startswith("postgres")),
        st.builds(lambda pw, q: f"postgresql://u:{pw}@127.0.0.1:9/db{q}", TEXT.filter(lambda t: "@" not in t),
                  st.sampled_from(["", "?sslmode=disable", f"?password={SECRET}", "?nosuch=1"])),
    ),
    AP_POSTGRES_HOST=st.one_of(st.just("127.0.0.1"), st.just("/tmp/no-such-pg-socket")),
    AP_DB_TYPE=st.one_of(VALUE, st.sampled_from(["SQLITE3", "sqlite3", "POSTGRES"])),
    AP_FILE_STORAGE_LOCATION=st.one_of(VALUE, st.sampled_from(["DB", "LOCAL", "s3"])),
)
ENV = st.fixed_dictionaries({}, optional=ENV_VALUE)


def _commands() -> st.SearchStrategy[list[str]]:
    """Every command with random values for its flags (and some random flags)."""
    opt = lambda flag, values=VALUE: st.one_of(st.just([]), values.map(lambda v: [flag, v]))  # noqa: E731

    def join(*parts: st.SearchStrategy[list[str]]) -> st.SearchStrategy[list[str]]:
        return st.tuples(*parts).map(lambda lists: [a for part in lists for a in part])

    owner = st.one_of(opt("--project", ID), opt("--platform", ID))
    commands = [
        join(st.just(["put", "-"]), opt("--type"), owner, opt("--name"), opt("--compress"), st.just(["--dry-run"])),
        join(st.just(["get"]), ID.map(lambda v: [v]), opt("--output", st.sampled_from(["-", "out", "", "/", "."]))),
        join(st.just(["presign"]), ID.map(lambda v: [v]), opt("--method"), opt("--expires", DURATION)),
        join(st.just(["presign", "--upload"]), opt("--type"), owner, opt("--name"), opt("--size", NUMBERS),
             opt("--expires", DURATION), st.just(["--dry-run"])),
        join(st.just(["sweep-expired", "--dry-run"]), opt("--retention-days", NUMBERS), opt("--types"),
             opt("--batch-size", NUMBERS), opt("--max-delete", NUMBERS), opt("--workers", NUMBERS)),
        join(st.just(["du"]), opt("--by"), opt("--type"), opt("--project", ID), opt("--platform", ID),
             opt("--older-than", DURATION)),
        join(st.just(["migrate-to-s3", "--dry-run"]), opt("--from"), opt("--types"), opt("--workers", NUMBERS),
             opt("--batch-size", NUMBERS), opt("--limit", NUMBERS)),
        join(st.just(["lifecycle", "apply", "--dry-run"]), opt("--retention-days", NUMBERS), opt("--grace-days", NUMBERS),
             opt("--noncurrent-days", NUMBERS)),
        join(st.just(["check-iam"]), opt("--skip"), opt("--prefix")),
        join(st.just(["gc", "--dry-run"]), st.sampled_from([[], ["--orphans"], ["--missing"], ["--pending"]]),
             opt("--grace", DURATION), opt("--max-delete", NUMBERS), opt("--workers", NUMBERS)),
        st.just(["config"]),
        st.just(["config", "--json"]),
        st.lists(VALUE, max_size=4),
    ]
    return st.one_of(commands).flatmap(lambda args: st.sampled_from([args, [*args, "--json"]]))


@pytest.fixture
def invoke(home: Path):
    runner = CliRunner()

    def invoke(args: list[str], env: dict[str, str], stdin: bytes = b"") -> None:
        full = {"AP_CONFIG_PATH": str(home), "AP_S3_SECRET_ACCESS_KEY": SECRET, "AP_POSTGRES_PASSWORD": SECRET,
                "AP_S3_BUCKET": "prop-bucket", "AP_S3_ENDPOINT": "http://127.0.0.1:9"}
        full.update(env)
        result = runner.invoke(app, args, env=full, input=stdin)
        shown = f"args={args!r} env={env!r}\nstdout={result.stdout!r}\nstderr={result.stderr!r}"
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"{type(result.exception).__name__} escaped: {shown}") from result.exception
        assert result.exit_code in DOCUMENTED, shown
        assert "Traceback" not in result.stdout + result.stderr, shown
        assert "\x1b" not in result.stderr, shown
        assert SECRET not in result.stdout + result.stderr, shown

    return invoke


@EXAMPLES
@given(args=_commands(), stdin=st.binary(max_size=64))
def test_random_flags_give_a_documented_exit_code(invoke, args: list[str], stdin: bytes) -> None:
    invoke(args, {}, stdin)


@EXAMPLES
@given(env=ENV, command=st.sampled_from([["config"], ["config", "--json"], ["du"], ["get", "x"],
                                        ["put", "-", "-t", "FLOW_RUN_LOG", "--project", "p1"]]))
def test_random_variables_give_a_documented_exit_code(invoke, env: dict[str, str], command: list[str]) -> None:
    invoke(command, env, b"x")


@EXAMPLES
@given(content=st.one_of(st.binary(max_size=200), TEXT.map(str.encode),
                         st.lists(st.tuples(st.sampled_from(VARIABLES), VALUE), max_size=4).map(
                             lambda pairs: "".join(f"{k}={v}\n" for k, v in pairs).encode("utf-8", "surrogatepass"))))
def test_random_dotenv_files_give_a_documented_exit_code(invoke, content: bytes) -> None:
    dotenv = Path.cwd() / ".env"
    dotenv.write_bytes(content)
    try:
        invoke(["config"], {})
    finally:
        dotenv.unlink()


@EXAMPLES
@given(document=st.one_of(
    st.binary(max_size=200),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT),
                 lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(TEXT, children, max_size=3)),
                 max_leaves=10).map(lambda d: __import__("json").dumps({"files": d}).encode()),
    st.lists(st.fixed_dictionaries({}, optional={"fileName": VALUE, "fileSize": st.one_of(st.integers(), st.floats(), TEXT)}),
             max_size=3).map(lambda files: __import__("json").dumps({"files": files}).encode()),
))
def test_random_upload_documents_give_a_documented_exit_code(invoke, document: bytes) -> None:
    invoke(["presign", "--from-json", "-", "-t", "FLOW_RUN_LOG", "--project", "p1", "--dry-run"], {}, document)


# -- owner ids: refused the same way by every command (issue 22, item 5) ---------------------

_ID_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_NOT_ID = st.one_of(  # one character no id may hold (',' separates ids in a filter)
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00,_-"
                  + _ID_CHARS).filter(lambda c: c != " "),
    st.sampled_from(["\n", "\r", "\t", "\x1b", "/", ".", "\u202e", "é", " "]),
)
BAD_OWNER = st.one_of(
    st.just(""),
    st.text(_ID_CHARS, min_size=65, max_size=80),  # longer than any id
    st.tuples(st.text(_ID_CHARS, min_size=1, max_size=10), _NOT_ID, st.text(_ID_CHARS, min_size=1, max_size=10))
    .map("".join),  # a bad character inside
    st.text(_ID_CHARS, min_size=1, max_size=10).map(lambda v: v + "\n"),  # `du --project $'abc\n'`
)
OWNER_COMMANDS = [  # every command: those that take an owner, and those that must not
    ["put", "-", "-t", "FLOW_RUN_LOG"],
    ["presign", "--upload", "-t", "FLOW_RUN_LOG", "--name", "a.txt", "--size", "1"],
    ["du"], ["du", "--verify"], ["du", "--by", "project"],
    ["sweep-expired"], ["sweep-expired", "--dry-run"], ["gc", "--dry-run"], ["migrate-to-s3", "--dry-run"],
    ["presign", "abc"], ["get", "abc"], ["lifecycle", "apply", "--dry-run"], ["check-iam"],
]


@EXAMPLES
@given(command=st.sampled_from(OWNER_COMMANDS), flag=st.sampled_from(["--project", "--platform"]),
       value=BAD_OWNER, json_out=st.booleans())
def test_a_bad_owner_id_is_refused_by_every_command_naming_the_flag(invoke, home: Path, command, flag, value, json_out) -> None:
    """`--project`/`--platform` with an id no row can have (empty, a newline, a control or
    path character, too long) is a usage error on every command: exit 2, one line naming the
    flag, nothing written — never exit 0 with the id silently trimmed or dropped."""
    import io
    import sqlite3
    from contextlib import redirect_stderr, redirect_stdout
    from unittest import mock

    from apstorage.cli.app import run

    args = [*command, flag, value, *(["--json"] if json_out else [])]
    env = {"AP_CONFIG_PATH": str(home), "AP_S3_BUCKET": "prop-bucket", "AP_S3_ENDPOINT": "http://127.0.0.1:9",
           "AP_S3_ACCESS_KEY_ID": "AKIAPROP", "AP_S3_SECRET_ACCESS_KEY": SECRET}
    stdout, stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    # The program's own entry point (`apstorage` runs `run`), so click's usage errors are
    # the one-line `error:` a person sees, as for every other refusal.
    with mock.patch.dict(os.environ, env), mock.patch("sys.stdin", io.TextIOWrapper(io.BytesIO(b"x"))), \
            redirect_stdout(stdout), redirect_stderr(stderr):
        code = run(args)
    stdout.flush()
    out, err = stdout.buffer.getvalue().decode(), stderr.getvalue()
    shown = f"args={args!r}\nstdout={out!r}\nstderr={err!r}"
    assert code == 2, shown
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and flag in errors[0], shown
    assert "\x1b" not in err, shown
    if json_out and out:
        assert json.loads(out)["error"]["exitCode"] == 2, shown
    catalog = home / "apstorage.sqlite"
    if catalog.exists():
        with sqlite3.connect(catalog) as db:
            tables = db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'file'").fetchone()[0]
            assert not tables or db.execute('SELECT count(*) FROM "file"').fetchone()[0] == 0, shown
    assert not (home / "cache").exists() or not any((home / "cache").rglob("*")), shown
