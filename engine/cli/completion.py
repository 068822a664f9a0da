"""Shell completion scripts for bash, zsh and fish, derived from the argparse parser.

The parser is read when the script is printed (`policyctl completion bash`), so every
command, subcommand, option and choice the parser has, the script completes; a command
added later needs no change here. `Command` is the parser's shape as the scripts need it:
subcommands with their help, options (and whether each takes a value, and its choices),
and the choices of a positional argument (`schema request|decision`); any other
positional argument completes file names.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

SHELLS = ("bash", "zsh", "fish")


@dataclass(frozen=True, slots=True)
class Option:
    flags: tuple[str, ...]
    help: str
    takes_value: bool
    choices: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Command:
    path: tuple[str, ...]  # () for `policyctl` itself, ("catalog", "show") for a subcommand
    help: str
    options: tuple[Option, ...]
    subcommands: tuple[Command, ...]
    positional_choices: tuple[str, ...]

    def walk(self) -> list[Command]:
        return [self, *(c for sub in self.subcommands for c in sub.walk())]


def _help(text: str | None) -> str:
    return " ".join((text or "").split()).replace("%%", "%")


def command_tree(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help: str = ""
) -> Command:
    options: list[Option] = []
    subcommands: list[Command] = []
    positional: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: _help(a.help) for a in action._choices_actions}
            for name, sub in action.choices.items():
                subcommands.append(command_tree(sub, (*path, name), helps.get(name, "")))
        elif action.option_strings:
            if action.help == argparse.SUPPRESS:
                continue
            options.append(
                Option(
                    tuple(action.option_strings),
                    _help(action.help),
                    action.nargs != 0,
                    tuple(str(c) for c in action.choices or ()),
                )
            )
        elif action.choices:
            positional.extend(str(c) for c in action.choices)
    return Command(path, help, tuple(options), tuple(subcommands), tuple(positional))


def script(shell: str, root: Command, prog: str = "policyctl") -> str:
    if shell == "bash":
        return _bash(root, prog)
    if shell == "zsh":
        return _zsh(root, prog)
    if shell == "fish":
        return _fish(root, prog)
    raise ValueError(f"no completion for shell `{shell}`")


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _cases(pairs: list[tuple[str, str]]) -> str:
    """`case` arms of a shell function: `"key") echo words;;`."""
    return "\n".join(
        f'        "{key}") echo {_sh_quote(words)} ;;' for key, words in pairs if words
    )


def _tables(root: Command, fn: str) -> str:
    """The shell functions bash and zsh share: a command path's subcommands, options, the
    options that take a value, an option's or a positional argument's choices."""
    commands = root.walk()
    subs = [(" ".join(c.path), " ".join(s.path[-1] for s in c.subcommands)) for c in commands]
    opts = [(" ".join(c.path), " ".join(f for o in c.options for f in o.flags)) for c in commands]
    valued = [
        (" ".join(c.path), " ".join(f for o in c.options if o.takes_value for f in o.flags))
        for c in commands
    ]
    choices = [
        (" ".join((*c.path, f)).strip(), " ".join(o.choices))
        for c in commands
        for o in c.options
        if o.choices
        for f in o.flags
    ]
    positional = [(" ".join(c.path), " ".join(c.positional_choices)) for c in commands]
    return f"""\
{fn}_subcommands() {{
    case "$1" in
{_cases(subs)}
    esac
}}
{fn}_options() {{
    case "$1" in
{_cases(opts)}
    esac
}}
{fn}_valued() {{
    case "$1" in
{_cases(valued)}
    esac
}}
{fn}_choices() {{
    case "$1" in
{_cases(choices)}
    esac
}}
{fn}_positional() {{
    case "$1" in
{_cases(positional)}
    esac
}}
# the command path of the words before the cursor (`catalog show`), options and their
# values skipped; sets {fn}_path and {fn}_prev_valued (the option before the cursor
# takes a value)
{fn}_locate() {{
    local i word skip=0 sub
    {fn}_path=""
    for ((i = 2; i < $#; i++)); do
        eval "word=\\${{$i}}"  # the i-th argument, in bash and in zsh
        if ((skip)); then skip=0; continue; fi
        case "$word" in
            --*=*) continue ;;
            -*)
                for sub in $({fn}_valued "${fn}_path"); do
                    [[ "$word" == "$sub" ]] && skip=1
                done
                continue ;;
        esac
        for sub in $({fn}_subcommands "${fn}_path"); do
            if [[ "$word" == "$sub" ]]; then
                {fn}_path="${{{fn}_path:+${fn}_path }}$word"
                break
            fi
        done
    done
    {fn}_prev_valued=$skip
}}
"""


def _bash(root: Command, prog: str) -> str:
    fn = f"_{prog.replace('-', '_')}"
    return f"""\
# bash completion for {prog}: generated by `{prog} completion bash` from its parser.
# Load it with `source <({prog} completion bash)`, or save it as
# ~/.local/share/bash-completion/completions/{prog}.
{_tables(root, fn)}
{fn}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    {fn}_locate "${{COMP_WORDS[@]:0:COMP_CWORD+1}}"
    COMPREPLY=()
    if (({fn}_prev_valued)); then
        local values
        values="$({fn}_choices "${{{fn}_path:+${fn}_path }}$prev")"
        if [[ -n "$values" ]]; then
            mapfile -t COMPREPLY < <(compgen -W "$values" -- "$cur")
        else
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        fi
        return 0
    fi
    if [[ "$cur" == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$({fn}_options "${fn}_path")" -- "$cur")
        return 0
    fi
    local words
    words="$({fn}_subcommands "${fn}_path") $({fn}_positional "${fn}_path")"
    if [[ -n "${{words// /}}" ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$words" -- "$cur")
    else
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
    fi
    return 0
}}
complete -o filenames -F {fn} {prog}
"""


def _zsh_items(command: Command) -> str:
    """`name:help` words for `_describe` (a `:` in a name escaped)."""
    return " ".join(
        _sh_quote(f"{s.path[-1].replace(':', chr(92) + ':')}:{s.help}") for s in command.subcommands
    )


def _zsh(root: Command, prog: str) -> str:
    fn = f"_{prog.replace('-', '_')}"
    described = "\n".join(
        f'        "{" ".join(c.path)}") items=({_zsh_items(c)}) ;;'
        for c in root.walk()
        if c.subcommands
    )
    return f"""\
#compdef {prog}
# zsh completion for {prog}: generated by `{prog} completion zsh` from its parser.
# Save it as `_{prog}` in a directory of $fpath, or load it with
# `source <({prog} completion zsh)` after `compinit`.
{_tables(root, fn)}
{fn}() {{
    local cur="${{words[CURRENT]}}" prev="${{words[CURRENT-1]}}"
    {fn}_locate "${{(@)words[1,CURRENT]}}"
    if (({fn}_prev_valued)); then
        local values="$({fn}_choices "${{{fn}_path:+${fn}_path }}$prev")"
        if [[ -n "$values" ]]; then
            compadd -- ${{=values}}
        else
            _files
        fi
        return
    fi
    if [[ "$cur" == -* ]]; then
        local options="$({fn}_options "${fn}_path")"
        compadd -- ${{=options}}
        return
    fi
    local -a items
    case "${fn}_path" in
{described}
    esac
    if (($#items)); then
        _describe -t commands 'command' items
        return
    fi
    local positional="$({fn}_positional "${fn}_path")"
    if [[ -n "$positional" ]]; then
        compadd -- ${{=positional}}
    else
        _files
    fi
}}
# autoloaded from $fpath, this file is the body of {fn}: run it; sourced, register it
if [[ "${{zsh_eval_context[-1]}}" == loadautofunc ]]; then
    {fn} "$@"
else
    compdef {fn} {prog}
fi
"""


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish(root: Command, prog: str) -> str:
    lines = [
        f"# fish completion for {prog}: generated by `{prog} completion fish` from its parser.",
        f"# Save it as ~/.config/fish/completions/{prog}.fish, or run"
        f" `{prog} completion fish | source`.",
        f"complete -c {prog} -e",
    ]
    all_subs = sorted({c.path[-1] for c in root.walk() if c.path})
    for command in root.walk():
        if command.path:
            here = f"__fish_seen_subcommand_from {command.path[-1]}"
            if len(command.path) > 1:
                here = f"__fish_seen_subcommand_from {command.path[-2]}; and {here}"
        else:
            here = "__fish_use_subcommand"
        names = " ".join(s.path[-1] for s in command.subcommands)
        if not command.path:  # `policyctl` itself: before any command is typed
            offer, cond = here, f"not __fish_seen_subcommand_from {' '.join(all_subs)}"
        elif command.subcommands:  # `policyctl catalog`: until its subcommand is typed
            offer = cond = f"{here}; and not __fish_seen_subcommand_from {names}"
        else:
            offer = cond = here
        for sub in command.subcommands:
            lines.append(
                f"complete -c {prog} -f -n {_fish_quote(offer)} -a {sub.path[-1]}"
                f" -d {_fish_quote(sub.help)}"
            )
        if command.positional_choices:
            lines.append(
                f"complete -c {prog} -f -n {_fish_quote(cond)}"
                f" -a {_fish_quote(' '.join(command.positional_choices))}"
            )
        for option in command.options:
            flags = " ".join(
                f"-l {f[2:]}" if f.startswith("--") else f"-s {f[1:]}" for f in option.flags
            )
            value = ""
            if option.choices:
                value = f" -x -a {_fish_quote(' '.join(option.choices))}"
            elif option.takes_value:
                value = " -r -F"
            lines.append(
                f"complete -c {prog} -n {_fish_quote(cond)} {flags}{value}"
                f" -d {_fish_quote(option.help)}"
            )
    return "\n".join(lines) + "\n"
