"""Shell completion for the ``containerjobs`` command: bash and zsh scripts made from
its argparse parser, so that they never drift from the options it takes.

``containerjobs completion bash`` (or ``zsh``) prints the script. Job ids complete
from ``containerjobs jobs -q`` on the store the command line names (``--db``, else
``CONTAINERJOBS_DB``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import attrs

_FILE_DESTS = {"db", "tls_dir", "secrets_dir", "allow_mount", "file"}  # values that are paths
_JOB_DESTS = {"job_id", "job_ids"}  # positionals that are job ids


@attrs.frozen
class _Option:
    names: tuple[str, ...]
    valued: bool
    choices: tuple[str, ...]
    files: bool
    help: str


@attrs.frozen
class _Command:
    name: str
    help: str
    options: tuple[_Option, ...]
    positionals: tuple[argparse.Action, ...]
    subcommands: tuple[_Command, ...]


def _help(action: argparse.Action) -> str:
    text = action.help if isinstance(action.help, str) and action.help != argparse.SUPPRESS else ""
    return " ".join(text.split())


def _command(name: str, help: str, parser: argparse.ArgumentParser) -> _Command:
    options, positionals, subcommands = [], [], []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: _help(choice) for choice in action._choices_actions}
            subcommands += [
                _command(sub, helps.get(sub, ""), subparser)
                for sub, subparser in action.choices.items()
            ]
        elif action.option_strings:
            options.append(
                _Option(
                    names=tuple(action.option_strings),
                    valued=action.nargs != 0,
                    choices=tuple(map(str, action.choices or ())),
                    files=action.dest in _FILE_DESTS,
                    help=_help(action),
                )
            )
        else:
            positionals.append(action)
    return _Command(name, help, tuple(options), tuple(positionals), tuple(subcommands))


def _walk(command: _Command, path: str = "") -> Iterator[tuple[str, _Command]]:
    """Every command with its path: ``""`` for the top, ``run``, ``templates save``."""
    yield path, command
    for sub in command.subcommands:
        yield from _walk(sub, f"{path} {sub.name}".strip())


def bash_script(parser: argparse.ArgumentParser) -> str:
    top = _command(parser.prog, "", parser)
    valued_cases, value_cases, option_cases, positional_cases = [], [], [], []
    for path, command in _walk(top):
        key = path.replace(" ", "/")
        valued = [name for option in command.options if option.valued for name in option.names]
        if valued:
            pattern = "|".join(f"'{key}':{name}" for name in valued)
            valued_cases.append(f"        {pattern}) return 0;;")
        for option in command.options:
            if not option.valued:
                continue
            pattern = "|".join(f"'{key}':{name}" for name in option.names)
            if option.choices:
                value_cases.append(
                    f"        {pattern}) COMPREPLY=($(compgen -W '{' '.join(option.choices)}' "
                    '-- "$cur"));;'
                )
            elif option.files:
                value_cases.append(f'        {pattern}) COMPREPLY=($(compgen -f -- "$cur"));;')
        names = " ".join(name for option in command.options for name in option.names)
        option_cases.append(f"        '{key}') words='{names}';;")
        if command.subcommands:
            subs = " ".join(sub.name for sub in command.subcommands)
            positional_cases.append(
                f"        '{key}') [[ $npos -eq 0 ]] && COMPREPLY=($(compgen -W '{subs}' "
                '-- "$cur"));;'
            )
        elif command.positionals:
            first = command.positionals[0]
            if first.dest in _JOB_DESTS:
                positional_cases.append(
                    f"        '{key}') COMPREPLY=($(compgen -W \"$(_containerjobs_ids)\" "
                    '-- "$cur"));;'
                )
            elif first.choices:
                words = " ".join(map(str, first.choices))
                positional_cases.append(
                    f"        '{key}') [[ $npos -eq 0 ]] && COMPREPLY=($(compgen -W '{words}' "
                    '-- "$cur"));;'
                )
            elif any(p.dest in _FILE_DESTS or p.nargs == argparse.REMAINDER
                     for p in command.positionals):
                positional_cases.append(
                    f"        '{key}') [[ $npos -ge 1 ]] && COMPREPLY=($(compgen -f -- \"$cur\"));;"
                )
    subcommand_cases = [
        "        '{}') echo '{}';;".format(
            path.replace(" ", "/"), " ".join(sub.name for sub in command.subcommands)
        )
        for path, command in _walk(top)
        if command.subcommands
    ]
    nl = "\n"
    return f"""\
# bash completion for containerjobs, made by: containerjobs completion bash
# Load it in this shell:  source <(containerjobs completion bash)
# or for every shell:
#   containerjobs completion bash > ~/.local/share/bash-completion/completions/containerjobs

_containerjobs_takes_value() {{
    case "$1:$2" in
{nl.join(valued_cases)}
    esac
    return 1
}}

_containerjobs_ids() {{
    "${{COMP_WORDS[0]}}" ${{_containerjobs_db:+--db "$_containerjobs_db"}} \\
        jobs -q --limit 200 2>/dev/null
}}

_containerjobs() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" path="" npos=0 i w words
    local _containerjobs_db=""
    [[ $COMP_CWORD -gt 0 ]] && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        [[ $w == --db ]] && _containerjobs_db="${{COMP_WORDS[i+1]}}"
        if _containerjobs_takes_value "$path" "$w"; then
            ((i++))
            continue
        fi
        [[ $w == -* ]] && continue
        # A word that names a subcommand of the command so far goes deeper.
        if [[ $npos -eq 0 && " $(_containerjobs_subcommands "$path") " == *" $w "* ]]; then
            path="${{path:+$path/}}$w"
        else
            ((npos++))
        fi
    done
    if _containerjobs_takes_value "$path" "$prev"; then
        case "$path:$prev" in
{nl.join(value_cases)}
        esac
        return 0
    fi
    if [[ $cur == -* ]]; then
        case "$path" in
{nl.join(option_cases)}
        esac
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
        return 0
    fi
    case "$path" in
{nl.join(positional_cases)}
    esac
    return 0
}}

_containerjobs_subcommands() {{
    case "$1" in
{nl.join(subcommand_cases)}
    esac
}}

complete -F _containerjobs containerjobs
"""


def _zsh_quote(text: str) -> str:
    # Inside '...' for _arguments: no quote, and no bracket or colon of its syntax.
    return (
        text.replace("'", "'\\''").replace("[", "(").replace("]", ")").replace(":", r"\:")
    )


def _zsh_arguments(command: _Command) -> list[str]:
    specs = []
    for option in command.options:
        action = ""
        if option.valued:
            if option.choices:
                action = f":value:({' '.join(option.choices)})"
            elif option.files:
                action = ":path:_files"
            else:
                action = ":value: "
        names = option.names
        exclusive = f"({' '.join(names)})" if len(names) > 1 else ""
        target = "{" + ",".join(names) + "}" if len(names) > 1 else names[0]
        repeat = "*" if option.help and "repeatable" in option.help else ""
        prefix = f"'{repeat or exclusive}'" if repeat or exclusive else ""
        specs.append(f"{prefix}{target}'[{_zsh_quote(option.help)}]{action}'")
    for index, positional in enumerate(command.positionals, start=1):
        if positional.dest in _JOB_DESTS:
            action = "_containerjobs_ids"
        elif positional.choices:
            action = f"({' '.join(map(str, positional.choices))})"
        elif positional.dest in _FILE_DESTS:
            action = "_files"
        elif positional.nargs == argparse.REMAINDER:
            specs.append("'*::command:_normal'")
            continue
        else:
            action = " "
        repeat = "*" if positional.nargs in ("+", "*") else str(index)
        specs.append(f"'{repeat}:{positional.dest}:{action}'")
    return specs


def zsh_script(parser: argparse.ArgumentParser) -> str:
    top = _command(parser.prog, "", parser)
    functions = []
    for path, command in _walk(top):
        name = "_containerjobs" + "".join(f"_{part}" for part in path.split())
        specs = " \\\n        ".join(_zsh_arguments(command)) or "''"
        if command.subcommands:
            described = " ".join(
                f"'{sub.name}:{_zsh_quote(sub.help)}'" for sub in command.subcommands
            )
            functions.append(
                f"""{name}() {{
    local curcontext="$curcontext" state line
    typeset -A opt_args
    _arguments -C \\
        {specs} \\
        '1: :->command' \\
        '*:: :->args'
    case $state in
        command)
            local -a commands
            commands=({described})
            _describe -t commands 'command' commands ;;
        args)
            local sub="{name}_${{line[1]}}"
            (( $+functions[$sub] )) && $sub ;;
    esac
}}"""
            )
        else:
            functions.append(
                f"""{name}() {{
    _arguments \\
        {specs}
}}"""
            )
    body = "\n\n".join(functions)
    return f"""\
#compdef containerjobs
# zsh completion for containerjobs, made by: containerjobs completion zsh
# Load it in this shell:  source <(containerjobs completion zsh)   (after compinit)
# or for every shell:     containerjobs completion zsh > "${{fpath[1]}}/_containerjobs"

_containerjobs_ids() {{
    local -a ids
    local db=${{opt_args[--db]:-}}
    ids=(${{(f)"$(containerjobs ${{db:+--db "$db"}} jobs -q --limit 200 2>/dev/null)"}})
    compadd -a ids
}}

{body}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _containerjobs "$@"
else
    compdef _containerjobs containerjobs
fi
"""
