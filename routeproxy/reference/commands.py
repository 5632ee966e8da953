"""The command reference: every subcommand of `routeproxy`, read from the argument parser `routeproxy` runs, so each
option's help is what `--help` prints."""

from __future__ import annotations

import argparse
import textwrap

from routeproxy.cli import build_parser
from routeproxy.reference.markdown import cell, code, table


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    (action,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return action


def option_name(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    if not action.option_strings:
        return formatter._format_args(action, formatter._get_default_metavar_for_positional(action))
    name = ", ".join(action.option_strings)
    if action.nargs != 0:
        name += " " + formatter._format_args(action, formatter._get_default_metavar_for_optional(action))
    return name


def option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help as `--help` prints it (``%(default)s`` filled in, ``%%`` a percent sign), on one line."""
    text = parser._get_formatter()._expand_help(action) if action.help else ""
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        text += " One of: " + ", ".join(code(str(choice)) for choice in action.choices) + "."
    return cell(text)


def command_section(name: str, summary: str, parser: argparse.ArgumentParser) -> str:
    # A fixed width: argparse would otherwise wrap to the terminal of whoever builds the site.
    formatter = parser.formatter_class(prog=parser.prog, width=100)  # type: ignore[call-arg]
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    usage = textwrap.dedent(formatter.format_help()).strip()
    rows = [
        (code(option_name(parser, action)), option_help(parser, action))
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and action.help != argparse.SUPPRESS
    ]
    return (
        f"## `routeproxy {name}` {{#{name}}}\n\n{summary[:1].upper()}{summary[1:]}.\n\n```text\n{usage}\n```\n\n"
        + table(("option", "what it does"), rows)
    )


def commands_reference() -> str:
    parser = build_parser()
    subcommands = _subcommands(parser)
    summaries = {choice.dest: choice.help or "" for choice in subcommands._choices_actions}
    sections = [command_section(name, summaries[name], sub) for name, sub in subcommands.choices.items()]
    return "\n\n".join(sections)
