"""The bash and zsh completion scripts of mytimerctl, generated from the command table."""

from __future__ import annotations

import shlex
from typing import Final

from ...protocol.schema import METHODS
from .commands import COMMANDS, EXTRA_COMMANDS, PROG

#: The shells ``mytimerctl completion`` writes a script for.
SHELLS: Final = ("bash", "zsh")

#: The options every command takes (see parser._add_common), completed everywhere.
_GLOBAL_FLAGS: Final = ("--unix", "--tcp", "--timeout", "--json", "--help")


def _bash_script() -> str:
    commands = [c.name for c in COMMANDS] + list(EXTRA_COMMANDS)
    valued = sorted(
        {"--unix", "--timeout"} | {p.flag for c in COMMANDS for p in c.params if not p.positional}
    )
    cases = [
        f'        {c.name}) words="{" ".join(p.flag for p in c.params if not p.positional)}";;'
        for c in COMMANDS
    ]
    methods = " ".join(m.name for m in METHODS)
    return f"""# bash completion for {PROG}, generated from the mytimerd method table
_{PROG}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local globals="{" ".join(_GLOBAL_FLAGS)}" command="" args=0 i words=""
    case "$prev" in
        --unix) COMPREPLY=($(compgen -f -- "$cur")); return;;
        --tcp|{"|".join(valued)}) COMPREPLY=(); return;;
    esac
    # Find the command word and count the positional arguments after it,
    # skipping option values.
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            --tcp) ((i += 2));;
            {"|".join(valued)}) ((i++));;
            -*) ;;
            *) if [[ -z "$command" ]]; then command="${{COMP_WORDS[i]}}"; else ((args++)); fi;;
        esac
    done
    if [[ -z "$command" ]]; then
        COMPREPLY=($(compgen -W "$globals {" ".join(commands)}" -- "$cur"))
        return
    fi
    case "$command" in
{chr(10).join(cases)}
        call) if [[ $args -eq 0 && "$cur" != -* ]]; then
                  COMPREPLY=($(compgen -W "{methods}" -- "$cur")); return
              fi;;
        completion) COMPREPLY=($(compgen -W "{" ".join(SHELLS)}" -- "$cur")); return;;
    esac
    COMPREPLY=($(compgen -W "$words $globals" -- "$cur"))
}}
complete -F _{PROG} {PROG}
"""


def _zsh_describe(text: str) -> str:
    """``text`` escaped for an _arguments ``[description]``."""
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _zsh_script() -> str:
    globals_ = [
        "'(--tcp)--unix[Unix socket of the daemon]:socket:_files'",
        "'(--unix)--tcp[TCP endpoint of the daemon]:host:_hosts:port: '",
        "'--timeout[Seconds to wait]:seconds: '",
        "'--json[Print the answer as JSON]'",
    ]
    described = [
        shlex.quote(f"{c.name}:{c.method.doc}".replace("\\", "\\\\")) for c in COMMANDS
    ] + ["'call:Call any method with a JSON request'", "'completion:Print a completion script'"]
    cases = []
    for c in COMMANDS:
        specs = []
        for p in c.params:
            if p.positional:
                specs.append(shlex.quote(f":{p.flag}: "))
            else:
                star = "*" if p.repeated else ""
                specs.append(
                    shlex.quote(f"{star}{p.flag}[{_zsh_describe(p.field.doc)}]:{p.metavar}: ")
                )
        cases.append(f"        {c.name}) _arguments $globals {' '.join(specs)};;")
    methods = " ".join(m.name for m in METHODS)
    return f"""# zsh completion for {PROG}, generated from the mytimerd method table
_{PROG}() {{
    local -a globals commands
    local context state state_descr line
    typeset -A opt_args
    globals=({" ".join(globals_)})
    commands=({" ".join(described)})
    _arguments -C $globals '1:command:->command' '*::argument:->argument'
    case $state in
    command) _describe -t commands '{PROG} command' commands;;
    argument)
        case $line[1] in
{chr(10).join(cases)}
        call) _arguments $globals '1:method:({methods})' '2:JSON request: ';;
        completion) _arguments '1:shell:({" ".join(SHELLS)})';;
        esac;;
    esac
}}
compdef _{PROG} {PROG}
"""


def completion_script(shell: str) -> str:
    """The completion script for ``shell`` (bash or zsh)."""
    return _bash_script() if shell == "bash" else _zsh_script()
