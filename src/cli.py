"""The command line the entry scripts share (train.py, eval.py, predict.py, export.py, prepare.py,
preprocess.py, postprocess.py, ascend310_infer/mindir_runner.py).

It owns what every script would otherwise write again: the parser (the script's docstring as its help),
the flags several scripts take, spelled one way everywhere (``--output`` for what a command writes; the
older spellings ``--out`` and ``--output_path`` stay accepted as aliases, so no command in the wild
breaks), the config with its ``--key value`` overrides, subcommands with an implied default (eval.py's
forms without a subcommand are contracts), and the entry point: parse, run, and a ``UserError`` as one
``error:`` line with exit status 2.

Importing this module imports ``src`` first, whose ``__init__`` sets the CPU fast-path environment before
anything imports MindSpore: ``from src import cli`` is a script's whole preamble. It imports nothing that
loads MindSpore, so ``--help`` and flag errors stay instant.
"""
import argparse
import functools
import sys
from typing import Callable, Optional, Sequence

from src.config import Config, add_config_arguments, config_from_args
from src.errors import exit_on_user_error

HELP_FLAGS = ("-h", "--help")


class _ImpliedCommandParser(argparse.ArgumentParser):
    """A parser with subcommands that also takes a command line without one: ``imply(argv)`` names the
    subcommand such a line means, and the line is parsed as if it had been written first."""

    imply: Optional[Callable[[Sequence[str]], str]] = None

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        commands = [action for action in self._actions if isinstance(action, argparse._SubParsersAction)]
        if self.imply is not None and commands and (not args or (args[0] not in commands[0].choices
                                                                 and args[0] not in HELP_FLAGS)):
            args.insert(0, self.imply(args))
        return super().parse_known_args(args, namespace)


def new_parser(doc: str, imply_command: Optional[Callable[[Sequence[str]], str]] = None) -> argparse.ArgumentParser:
    """The script's parser, its docstring as the help text. With ``imply_command`` the parser's
    subcommands (``add_commands``) may be left out: that function of the arguments picks the one meant."""
    parser = _ImpliedCommandParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.imply = imply_command
    return parser


def add_commands(parser: argparse.ArgumentParser):
    """The subparsers of a script with subcommands (``prepare.py synth``, ``eval.py score``); the chosen
    one is ``args.command``."""
    # subparsers are built by the base class: only the top level implies a missing subcommand
    return parser.add_subparsers(dest="command", required=True, parser_class=argparse.ArgumentParser)


def add_command(commands, name: str, help: str) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=help, description=help)


def add_config(parser: argparse.ArgumentParser, what_it_sets: str) -> None:
    """``--config CFG`` (required) and every config key as a ``--key value`` override."""
    parser.add_argument("--config", required=True, help=f"yaml config ({what_it_sets})")
    add_config_arguments(parser)


def add_data_and_fold(parser: argparse.ArgumentParser, fold_help: str) -> None:
    """``--data PRE --fold F``: a preprocessed folder and one of its folds (both required)."""
    parser.add_argument("--data", required=True, help="preprocessed folder (plans.json, splits.json, cases)")
    parser.add_argument("--fold", required=True, help=fold_help)


def add_output(parser: argparse.ArgumentParser, help: str, *old_spellings: str) -> None:
    """``--output`` (required), the one spelling of what a command writes; ``old_spellings`` (``--out``,
    ``--output_path``) are accepted too, for the commands written before the spelling was settled (the help
    lists them beside ``--output``)."""
    parser.add_argument("--output", *old_spellings, dest="output", required=True, help=help)


def add_model_files(parser: argparse.ArgumentParser) -> None:
    """Exactly one model: training checkpoint(s) (ensembled) or an exported MindIR."""
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--ckpt", nargs="+", metavar="CKPT", help="training checkpoint(s); several are ensembled")
    models.add_argument("--mindir", metavar="FILE",
                        help="MindIR exported by export.py (with its sidecar NAME.mindir.json)")


def add_overwrite(parser, what_it_replaces: str) -> None:
    """``--overwrite``: what the script may replace that it refuses to replace without the flag."""
    parser.add_argument("--overwrite", action="store_true", help=what_it_replaces)


def add_merge_shards(parser: argparse.ArgumentParser, what_the_merge_does: str) -> None:
    """``--merge_shards``, the last step scripts/run_distribute_eval.sh runs after its workers."""
    parser.add_argument("--merge_shards", action="store_true",
                        help=f"after a sharded run (scripts/run_distribute_eval.sh runs this): {what_the_merge_does}")


def load_config(args: argparse.Namespace) -> Config:
    """The ``--config`` yaml with the command line's ``--key value`` overrides applied and checked."""
    return config_from_args(args)


def entry_point(build_parser: Callable[[], argparse.ArgumentParser], run: Callable[[argparse.Namespace], None],
                step_aside: Optional[Callable[[], bool]] = None) -> Callable:
    """The script's ``main(argv=None)``: parse, then ``run(args)``; a UserError is one ``error:`` line and
    exit status 2. ``step_aside()`` true (msrun's scheduler process, which runs the script too but has no
    share of the work) returns before anything is parsed."""

    @exit_on_user_error
    @functools.wraps(run)
    def main(argv=None) -> None:
        if step_aside is not None and step_aside():
            return
        run(build_parser().parse_args(argv))

    return main
