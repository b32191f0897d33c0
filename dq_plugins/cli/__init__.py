"""The ``dq`` command line: read, export, re-analyse and compare the results of past runs.

    dq report RUN_ID                                   summary, top issues, weakest slices
    dq export RUN_ID --issue label --format csv        flagged rows with their suggested labels
    dq analyze RUN_ID [--child-run]                    rerun the analysis from the raw record in the run
    dq compare RUN_A RUN_B                             issue counts, noise rates and slices side by side
    dq upload LOCAL_DIR [--run-id RUN_ID]              log a folder kept while MLflow was unreachable

Also ``python -m dq_plugins ...``. Every command takes the tracking URI as MLflow's own CLI does:
``--tracking-uri URI``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working
directory. Tables go to stdout, progress to stderr (``--quiet`` silences it).

Exit codes (:class:`ExitCode`): 0 success, 1 runtime error (unknown run, missing artifact, ...:
one line on stderr, no traceback unless ``--traceback``), 2 usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from dq_plugins.cli.commands import ExitCode, _Progress, cmd_analyze, cmd_compare, cmd_export, cmd_report, cmd_upload
from dq_plugins.deprecation import warn_renamed
from dq_plugins.schema import issue_types as registered_issue_types
from dq_plugins.sinks.offline import RunNotFoundError, make_client


DESCRIPTION = """Read, export, re-analyse and compare the dq_plugins results of past MLflow runs.

  dq report RUN_ID                               summary, top issues, weakest slices
  dq export RUN_ID --issue label --format csv    flagged rows with their suggested labels
  dq analyze RUN_ID [--child-run]                rerun the analysis from the raw record in the run
  dq compare RUN_A RUN_B                         issue counts, noise rates and slices side by side
  dq upload LOCAL_DIR [--run-id RUN_ID]          log a folder kept while MLflow was unreachable"""


EPILOG = """The tracking URI: --tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.
Exit codes: 0 success, 1 runtime error (one line on stderr), 2 usage error.
Run `dq COMMAND --help` for the options of a command."""


EXPORT_FORMATS: tuple[str, ...] = ("csv", "parquet", "jsonl")
"""Values of ``dq export --format``."""


class _RenamedFlag(argparse.Action):
    """A flag's former name: stores into the new flag's ``dest`` and warns (:func:`~dq_plugins.deprecation.warn_renamed`)."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        warn_renamed(option_string or self.option_strings[0], self.new, parser.prog, stacklevel=2)
        setattr(namespace, self.dest, values)


def _existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r} (give the path of a YAML file of rules)")
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer but got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer but got {value}")
    return value


def _add_common(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    # Accepted before and after the command: below it, a flag left out keeps the top-level value.
    unset_uri, unset_flag = (None, False) if top_level else (argparse.SUPPRESS, argparse.SUPPRESS)
    parser.add_argument("--tracking-uri", default=unset_uri, metavar="URI",
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
    parser.add_argument("-q", "--quiet", action="store_true", default=unset_flag, help="no progress lines on stderr.")
    parser.add_argument("--traceback", action="store_true", default=unset_flag,
                        help="show the full traceback of an error.")


def build_parser() -> argparse.ArgumentParser:
    """The ``dq`` argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="dq", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    report = commands.add_parser("report", help="summary, top issues and weakest slices of a run.")
    report.add_argument("run_id", metavar="RUN_ID")
    report.add_argument("--top", type=_positive_int, default=10, help="rows per table (default 10).")
    report.set_defaults(handler=cmd_report)

    export = commands.add_parser("export", help="write the flagged rows of a run, with suggested labels.")
    export.add_argument("run_id", metavar="RUN_ID")
    names = ", ".join(f"'{t.name}' ({t.flag_column})" for t in registered_issue_types())
    export.add_argument("--issue", default="label", help=f"issue type: {names}; default 'label'.")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="csv", help="file format (default csv).")
    export.add_argument("--output", "-o", metavar="PATH", help="file to write, '-' for stdout (csv, jsonl); "
                        "default dq_<issue>_issues_<run id prefix>.<format>.")
    export.add_argument("--split", default=None, help="only this split (default: every split, with a split column).")
    export.add_argument("--force", action="store_true", help="overwrite the output file if it exists.")
    export.set_defaults(handler=cmd_export)

    analyze = commands.add_parser("analyze", help="rerun the end-of-fit analysis from the raw record in a run.")
    analyze.add_argument("run_id", metavar="RUN_ID")
    analyze.add_argument("--child-run", action="store_true",
                         help="log into a new run nested under RUN_ID instead of replacing its dq/ results.")
    analyze.add_argument("--early-epochs", type=_positive_int, default=None,
                         help="the first epochs, averaged by EL2N and the early mislabel signals (default: the "
                         "callback's default).")
    analyze.add_argument("--el2n-epochs", dest="early_epochs", type=_positive_int, action=_RenamedFlag,
                         new="--early-epochs", help=argparse.SUPPRESS)
    analyze.add_argument("--max-issue-rows", type=_positive_int, default=None,
                         help="rows of dq/issues.json (default 500).")
    analyze.add_argument("--rules", type=_existing_file, default=None, metavar="YAML",
                         help="rules to evaluate on the new results (the recipe config format: a `rules:` list).")
    analyze.set_defaults(handler=cmd_analyze)

    compare = commands.add_parser("compare", help="two runs side by side: issues, noise rates, slices.")
    compare.add_argument("run_a", metavar="RUN_A")
    compare.add_argument("run_b", metavar="RUN_B")
    compare.add_argument("--top", type=_positive_int, default=20, help="slice rows (default 20).")
    compare.set_defaults(handler=cmd_compare)

    upload = commands.add_parser(
        "upload", help="log a folder that a callback kept while MLflow was unreachable into a run.",
        description="Log a fallback folder (kept by the callbacks while MLflow was unreachable; the warning "
        "names it) into a run: its files, tables, metrics and tags. The tracking URI: --tracking-uri, else "
        "MLFLOW_TRACKING_URI, else the one the results were meant for.",
    )
    upload.add_argument("local_dir", metavar="LOCAL_DIR", help="the fallback folder, e.g. dq_artifacts/<run id>.")
    upload.add_argument("--run-id", default=None, help="log into this existing run (default: the run the callback "
                        "had opened if it exists there, else a new run).")
    upload.add_argument("--experiment-name", default=None, metavar="NAME",
                        help="experiment of a new run (default: the one the results were meant for).")
    upload.set_defaults(handler=cmd_upload)

    for sub in (report, export, analyze, compare, upload):
        _add_common(sub, top_level=False)
    return parser


def _quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    expected = (RunNotFoundError, FileNotFoundError, FileExistsError, ValueError, PermissionError)
    if not isinstance(err, expected):
        text = f"{type(err).__name__}: {text} (rerun with --traceback for details)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dq`` and ``python -m dq_plugins``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    if args.command == "export" and args.output == "-" and args.format == "parquet":
        parser.error("--format parquet cannot be written to stdout; pass --output PATH.")
    _quiet_mlflow()
    progress = _Progress(args.quiet)
    try:
        client = make_client(args.tracking_uri) if args.command != "upload" else None  # upload picks its own URI
        return int(args.handler(args, client, progress, sys.stdout))
    except BrokenPipeError:  # the reader went away (`dq report ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.ERROR
    except KeyboardInterrupt:
        print(f"dq {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one clear line instead of a traceback, unless asked
        if args.traceback:
            raise
        print(f"dq {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return ExitCode.ERROR
