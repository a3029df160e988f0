"""The bash and zsh completion scripts of mytimerctl, generated from the command table."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Final

from .commands import COMMANDS, EXTRA_COMMANDS, METHOD_NAMES, PROG, Command

#: The shells ``mytimerctl completion`` writes a script for.
SHELLS: Final = ("bash", "zsh")

#: The hidden command the scripts call back for the commands and options of
#: a library other than libmy_timer: ``mytimerctl __complete WORDS...`` prints
#: one word a line, read from the describe cache only (never the network).
COMPLETE: Final = "__complete"

#: The options every command takes (see parser._add_common), completed everywhere.
GLOBAL_FLAGS: Final = (
    "--unix",
    "--tcp",
    "--tls",
    "--tls-ca",
    "--tls-cert",
    "--tls-key",
    "--tls-server-name",
    "--timeout",
    "--json",
    "--help",
)

#: What a command does, where its method's doc says what the protocol does.
_SUMMARY: Final = {"watch": "Print the library's events as they come"}

#: Options only given before the command.
_TOP_FLAGS: Final = ("--version",)


def command_words(c: Command) -> list[str]:
    """The options of command ``c`` (its request's and its own)."""
    words = []
    for p in c.params:
        if not p.positional:
            words += [p.flag, p.negative_flag] if p.switch else [p.flag]
    return words + list(c.options) + list(c.switches)


def _value_slots(commands: Sequence[Command]) -> dict[str, dict[str, tuple[str, ...] | None]]:
    """Option -> command -> the choices of its value (() for free text), None: no value."""
    slots: dict[str, dict[str, tuple[str, ...] | None]] = {}
    for c in commands:
        for p in c.params:
            if p.positional:
                continue
            for flag in (p.flag, p.negative_flag) if p.switch else (p.flag,):
                slots.setdefault(flag, {})[c.name] = None if p.switch else p.choices
        for flag, values in c.options.items():
            slots.setdefault(flag, {})[c.name] = values
    return slots


def _names(commands: Sequence[Command], name: str) -> tuple[str, ...]:
    """``name`` and its aliases."""
    return next(((c.name, *c.aliases) for c in commands if c.name == name), (name,))


def _bash_value(values: tuple[str, ...]) -> str:
    if not values:
        return "if ((i + 1 == COMP_CWORD)); then COMPREPLY=(); return; fi; ((i++))"
    return (
        "if ((i + 1 == COMP_CWORD)); then\n"
        f'                    COMPREPLY=($(compgen -W "{" ".join(values)}" -- "$cur")); return\n'
        "                fi; ((i++))"
    )


def _bash_script(commands: Sequence[Command] = COMMANDS) -> str:
    names = [n for c in commands for n in (c.name, *c.aliases)] + list(EXTRA_COMMANDS)
    valued = {"--timeout"}
    choices = []
    for flag, per_command in sorted(_value_slots(commands).items()):
        kinds = set(per_command.values())
        if kinds == {()}:
            valued.add(flag)  # free text in every command: complete nothing
            continue
        if kinds == {None}:
            continue  # a switch everywhere: a word like any other option
        # The value (its choices), or none, depends on the command.
        branches = [
            f"                {'|'.join(_names(commands, name))}) {_bash_value(values)};;"
            for name, values in per_command.items()
            if values is not None
        ]
        choices.append(
            f'{flag}) case "$command" in\n' + "\n".join(branches) + "\n            esac;;"
        )
    cases = []
    for c in commands:
        words = " ".join(command_words(c))
        positional = [p for p in c.params if p.positional]
        free = ""
        if positional:
            p = positional[0]
            limit = "" if p.repeated else f" && ((args < {len(positional)}))"
            offer = (
                f'COMPREPLY=($(compgen -W "{" ".join(p.choices)}" -- "$cur")); '
                if p.choices
                else ""
            )
            # A positional slot: its choices (watch's events), or free text (echo's MESSAGE).
            free = f' [[ "$cur" != -* ]]{limit} && {{ {offer}return; }};'
        cases.append(f'        {"|".join((c.name, *c.aliases))}) words="{words}";{free};')
    methods = " ".join(METHOD_NAMES)
    return f"""# bash completion for {PROG}, generated from the mytimerd method table
_{PROG}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}"
    local globals="{" ".join(GLOBAL_FLAGS)}" command="" args=0 i words=""
    # Walk the words before the cursor: find the command, count its positional
    # arguments, and step over option values. When the cursor is on a value
    # (--unix PATH, --tcp HOST PORT, --tls-ca FILE, --timeout SECONDS, --delay-ms N...),
    # complete that value and nothing else.
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            --unix|--tls-ca|--tls-cert|--tls-key) if ((i + 1 == COMP_CWORD)); then
                        COMPREPLY=($(compgen -f -- "$cur")); return
                    fi; ((i++));;
            --tls-server-name) if ((i + 1 == COMP_CWORD)); then
                        COMPREPLY=($(compgen -A hostname -- "$cur")); return
                    fi; ((i++));;
            --tcp) if ((i + 1 == COMP_CWORD)); then
                       COMPREPLY=($(compgen -A hostname -- "$cur")); return
                   fi
                   ((i + 2 == COMP_CWORD)) && {{ COMPREPLY=(); return; }}  # PORT
                   ((i += 2));;
{chr(10).join("            " + line for line in choices)}
            {"|".join(sorted(valued))})
                ((i + 1 == COMP_CWORD)) && {{ COMPREPLY=(); return; }}
                ((i++));;
            -*) ;;
            *) if [[ -z "$command" ]]; then command="${{COMP_WORDS[i]}}"; else ((args++)); fi;;
        esac
    done
    # Another library's commands and options: from the describe cache, by {PROG} itself.
    local served
    served="$("${{COMP_WORDS[0]}}" {COMPLETE} "${{COMP_WORDS[@]:1:COMP_CWORD-1}}" 2>/dev/null)"
    if [[ -z "$command" ]]; then
        COMPREPLY=($(compgen -W "$globals {" ".join((*_TOP_FLAGS, *names))} $served" -- "$cur"))
        return
    fi
    COMPREPLY=()
    case "$command" in
        completion) ((args == 0)) && COMPREPLY=($(compgen -W "{" ".join(SHELLS)}" -- "$cur"))
                    return;;
        call) if [[ "$cur" != -* ]]; then
                  ((args == 0)) && COMPREPLY=($(compgen -W "{methods}" -- "$cur"))
                  ((args < 2)) && return  # METHOD, then the JSON request (free text)
              fi;;
{chr(10).join(cases)}
        *) COMPREPLY=($(compgen -W "$served" -- "$cur")); return;;
    esac
    COMPREPLY=($(compgen -W "$words $globals" -- "$cur"))
}}
complete -F _{PROG} {PROG}
"""


def _zsh_describe(text: str) -> str:
    """``text`` escaped for an _arguments ``[description]``."""
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _zsh_script(commands: Sequence[Command] = COMMANDS) -> str:
    globals_ = [
        "'(--tcp --tls --tls-ca --tls-cert --tls-key --tls-server-name)"
        "--unix[Unix socket of the daemon]:socket:_files'",
        "'(--unix)--tcp[TCP endpoint of the daemon]:host:_hosts:port: '",
        "'(--unix)--tls[Speak TLS to the daemon]'",
        "'(--unix)--tls-ca[CA certificates to trust for the daemon]:file:_files'",
        "'(--unix)--tls-cert[Client certificate]:file:_files'",
        "'(--unix)--tls-key[Key of the client certificate]:file:_files'",
        "'(--unix)--tls-server-name[Name the daemon certificate must hold]:name:_hosts'",
        "'--timeout[Seconds to wait]:seconds: '",
        "'--json[Print the answer as JSON]'",
    ]
    described = [
        shlex.quote(f"{name}:{_SUMMARY.get(c.name, c.method.doc)}".replace("\\", "\\\\"))
        for c in commands
        for name in (c.name, *c.aliases)
    ] + ["'call:Call any method with a JSON request'", "'completion:Print a completion script'"]
    cases = []
    for c in commands:
        specs = []
        for p in c.params:
            action = f"({' '.join(p.choices)})" if p.choices else " "
            if p.positional:
                star = "*" if p.repeated else ""
                specs.append(shlex.quote(f"{star}:{p.flag}:{action}"))
            elif p.switch:
                both = f"({p.flag} {p.negative_flag})"
                doc = _zsh_describe(p.field.doc)
                specs.append(shlex.quote(f"{both}{p.flag}[{doc}]"))
                specs.append(shlex.quote(f"{both}{p.negative_flag}[{doc} (false)]"))
            else:
                star = "*" if p.repeated else ""
                specs.append(
                    shlex.quote(
                        f"{star}{p.flag}[{_zsh_describe(p.field.doc)}]:{p.metavar}:{action}"
                    )
                )
        for flag, values in c.options.items():
            specs.append(shlex.quote(f"{flag}[Output form]:{flag[2:]}:({' '.join(values)})"))
        for flag in c.switches:
            specs.append(shlex.quote(f"{flag}[{flag[2:].replace('-', ' ')}]"))
        cases.append(
            f"        {'|'.join((c.name, *c.aliases))}) _arguments $globals {' '.join(specs)};;"
        )
    methods = " ".join(METHOD_NAMES)
    return f"""# zsh completion for {PROG}, generated from the mytimerd method table
_{PROG}() {{
    local -a globals commands served typed
    local context state state_descr line
    typeset -A opt_args
    # Another library's commands and options: from the describe cache, by {PROG} itself.
    typed=("${{(@Q)words[2,CURRENT-1]}}")
    served=(${{(f)"$(${{(Q)words[1]}} {COMPLETE} "${{typed[@]}}" 2>/dev/null)"}})
    served=(${{served:#}})  # no output: no words
    globals=({" ".join(globals_)})
    commands=({" ".join(described)})
    _arguments -C $globals '--version[Print the version of {PROG}]' \\
        '1:command:->command' '*::argument:->argument'
    case $state in
    command) local ret=1
        _describe -t commands '{PROG} command' commands && ret=0
        (( $#served )) && compadd -a served && ret=0
        return ret;;
    argument)
        case $line[1] in
{chr(10).join(cases)}
        call) _arguments $globals '1:method:({methods})' '2:JSON request: ';;
        completion) _arguments '1:shell:({" ".join(SHELLS)})';;
        *) (( $#served )) && compadd -a served;;
        esac;;
    esac
}}
compdef _{PROG} {PROG}
"""


def completion_script(shell: str, commands: Sequence[Command] = COMMANDS) -> str:
    """The completion script for ``shell`` (bash or zsh) for the command table ``commands``."""
    return _bash_script(commands) if shell == "bash" else _zsh_script(commands)
