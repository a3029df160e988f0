"""The bash and zsh completion scripts of mytimerctl, generated from the command table."""

from __future__ import annotations

import shlex
from typing import Final

from ...protocol.interfaces import METHODS
from .commands import COMMANDS, EXTRA_COMMANDS, PROG

#: The shells ``mytimerctl completion`` writes a script for.
SHELLS: Final = ("bash", "zsh")

#: The options every command takes (see parser._add_common), completed everywhere.
_GLOBAL_FLAGS: Final = (
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

#: Options only given before the command.
_TOP_FLAGS: Final = ("--version",)


def _bash_script() -> str:
    commands = [c.name for c in COMMANDS] + list(EXTRA_COMMANDS)
    valued = sorted(
        {"--timeout"} | {p.flag for c in COMMANDS for p in c.params if not p.positional}
    )
    cases = []
    for c in COMMANDS:
        words = " ".join([p.flag for p in c.params if not p.positional] + list(c.options))
        positionals = sum(p.positional for p in c.params)
        # A positional slot (echo's MESSAGE) takes free text: nothing to offer there.
        free = f' [[ "$cur" != -* ]] && ((args < {positionals})) && return;' if positionals else ""
        cases.append(f'        {c.name}) words="{words}";{free};')
    choices = [
        f"{flag}) if ((i + 1 == COMP_CWORD)); then\n"
        f'                COMPREPLY=($(compgen -W "{" ".join(values)}" -- "$cur")); return\n'
        "            fi; ((i++));;"
        for flag, values in {f: v for c in COMMANDS for f, v in c.options.items()}.items()
    ]
    methods = " ".join(m.name for m in METHODS)
    return f"""# bash completion for {PROG}, generated from the mytimerd method table
_{PROG}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}"
    local globals="{" ".join(_GLOBAL_FLAGS)}" command="" args=0 i words=""
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
            {"|".join(valued)})
                ((i + 1 == COMP_CWORD)) && {{ COMPREPLY=(); return; }}
                ((i++));;
            -*) ;;
            *) if [[ -z "$command" ]]; then command="${{COMP_WORDS[i]}}"; else ((args++)); fi;;
        esac
    done
    if [[ -z "$command" ]]; then
        COMPREPLY=($(compgen -W "$globals {" ".join(_TOP_FLAGS)} {" ".join(commands)}" -- "$cur"))
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
        *) return;;
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
        for flag, values in c.options.items():
            specs.append(shlex.quote(f"{flag}[Output form]:{flag[2:]}:({' '.join(values)})"))
        cases.append(f"        {c.name}) _arguments $globals {' '.join(specs)};;")
    methods = " ".join(m.name for m in METHODS)
    return f"""# zsh completion for {PROG}, generated from the mytimerd method table
_{PROG}() {{
    local -a globals commands
    local context state state_descr line
    typeset -A opt_args
    globals=({" ".join(globals_)})
    commands=({" ".join(described)})
    _arguments -C $globals '--version[Print the version of {PROG}]' \\
        '1:command:->command' '*::argument:->argument'
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
