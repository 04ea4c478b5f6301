"""docs/deploy.md against the command-line tools it drives: every `az`, `databricks` and `func` command in its
shell blocks names a command the tool has, with flags the command takes and as many positional arguments as it
accepts (the Databricks CLI refuses positional arguments next to --json for many commands).

What each tool accepts is recorded in cli_reference.json from the tools' own sources (repository, version and
file for each entry). A command the guide starts using needs its entry there, recorded the same way. Flags must
be spelled in full (az would take an unambiguous prefix; the guide does not rely on that).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bicep_templates import ROOT

GUIDE = ROOT / "docs" / "deploy.md"
REFERENCE = json.loads((Path(__file__).resolve().parent / "cli_reference.json").read_text())
TOOLS = ("az", "databricks", "func")


# Shell reading: enough of bash for the guide (quotes, escapes, line continuations, $(...), comments,
# separators, env assignments, subshells and brace groups), not a general shell parser.


@dataclass
class Command:
    words: list[str]
    line: int
    text: str = field(default="")


def shell_blocks(markdown: str) -> list[tuple[int, str]]:
    """(first line number, text) of each ```sh / ```bash / ```shell block."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(markdown.splitlines(), 1):
        if current is None:
            if re.fullmatch(r"```(sh|bash|shell)\s*", line):
                current, start = [], number + 1
        elif line.startswith("```"):
            blocks.append((start, "\n".join(current) + "\n"))
            current = None
        else:
            current.append(line)
    assert current is None, "unclosed code block in the guide"
    return blocks


def _matching_paren(text: str, i: int) -> int:
    """Index of the ')' closing the '$(' whose '(' is at text[i]."""
    depth, j = 0, i
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == "'":
            j = text.index("'", j + 1) + 1
            continue
        if c == '"':
            j += 1
            while text[j] != '"':
                if text[j] == "\\":
                    j += 1
                elif text[j] == "$" and text[j + 1] == "(":
                    j = _matching_paren(text, j + 1)
                j += 1
            j += 1
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    raise ValueError(f"unbalanced $( in {text!r}")


def parse_shell(text: str, line: int = 1) -> list[Command]:
    """Commands (as words) in `text`, those inside $(...) included, in order of appearance."""
    commands: list[Command] = []
    words: list[str] = []
    word: list[str] | None = None
    start_line = line
    i = 0

    def end_word():
        nonlocal word
        if word is not None:
            words.append("".join(word))
            word = None

    def end_command():
        nonlocal words, start_line
        end_word()
        if words:
            commands.append(Command(words, start_line))
        words = []
        start_line = line

    def substitution(j: int) -> int:
        """Parse the $( at text[j]; return the index after its ')'."""
        close = _matching_paren(text, j + 1)
        inner = text[j + 2:close]
        commands.extend(parse_shell(inner, line))
        return close + 1

    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] == "\n":
            i += 2
            line += 1
        elif c == "\\":
            word = (word or []) + [text[i + 1]]
            i += 2
        elif c == "\n":
            end_command()
            line += 1
            start_line = line
            i += 1
        elif c in " \t":
            end_word()
            i += 1
        elif c == "#" and word is None:
            i = text.index("\n", i)
        elif c in ";|&()":
            end_command()
            i += 1
        elif c == "'":
            close = text.index("'", i + 1)
            word = (word or []) + [text[i + 1:close]]
            line += text[i:close].count("\n")
            i = close + 1
        elif c == '"':
            word = word or []
            i += 1
            while text[i] != '"':
                if text[i] == "\\" and text[i + 1] in '"\\$`':
                    word.append(text[i + 1])
                    i += 2
                elif text[i] == "$" and text[i + 1] == "(":
                    after = substitution(i)
                    word.append("$(...)")
                    line += text[i:after].count("\n")
                    i = after
                else:
                    if text[i] == "\n":
                        line += 1
                    word.append(text[i])
                    i += 1
            i += 1
        elif c == "$" and text[i + 1:i + 2] == "(":
            after = substitution(i)
            word = (word or []) + ["$(...)"]
            line += text[i:after].count("\n")
            i = after
        else:
            word = (word or []) + [c]
            i += 1
    end_command()
    for command in commands:
        # Leading assignments (VAR=value cmd), brace groups and function definitions are not the command.
        while command.words and (
            re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", command.words[0], re.S)
            or command.words[0] in ("{", "}", "export")
            or command.words[0].endswith("()")
        ):
            command.words.pop(0)
    return [c for c in commands if c.words]


def guide_commands() -> list[Command]:
    out = []
    for start, block in shell_blocks(GUIDE.read_text()):
        for command in parse_shell(block, start):
            if command.words[0] in TOOLS:
                command.text = " ".join(command.words)
                out.append(command)
    return out


# Checking one command line against the reference.


def resolve(words: list[str]) -> tuple[str, list[str]]:
    """The longest reference command that `words` starts with, and the words after it."""
    for n in range(len(words), 0, -1):
        path = " ".join(words[:n])
        if path in REFERENCE["commands"]:
            return path, words[n:]
    raise KeyError(f"no command of the reference matches {' '.join(words)!r}")


def check(words: list[str]) -> list[str]:
    """Problems of one command line; empty when the tool accepts it."""
    try:
        path, rest = resolve(words)
    except KeyError as e:
        return [str(e.args[0])]
    entry = REFERENCE["commands"][path]
    tool = REFERENCE["tools"][words[0]]
    flags = {**tool.get("global_flags", {}), **entry["flags"]}
    problems, positionals, seen = [], [], set()
    i = 0
    while i < len(rest):
        word = rest[i]
        if word.startswith("-") and len(word) > 1 and not word[1:2].isdigit():
            name, inline = (word.split("=", 1) + [None])[:2] if word.startswith("--") else (word, None)
            if name not in flags:
                problems.append(f"{path}: unknown flag {name}")
            elif flags[name] and inline is None:
                i += 1  # its value
            seen.add(name)
        else:
            positionals.append(word)
        i += 1
    with_json = "--json" in seen and "args_with_json" in entry
    low, high = entry["args_with_json"] if with_json else entry["args"]
    if not low <= len(positionals) <= high:
        allowed = f"{low}" if low == high else f"{low} to {high}"
        where = " with --json" if with_json else ""
        problems.append(f"{path}: {len(positionals)} positional argument(s){where} {positionals}, accepts {allowed}")
    return problems


COMMANDS = guide_commands()


def test_the_guide_has_commands_of_every_tool():
    assert {c.words[0] for c in COMMANDS} == set(TOOLS)
    assert len(COMMANDS) >= 25


@pytest.mark.parametrize("command", COMMANDS, ids=[f"line{c.line}-{' '.join(c.words[:3])}" for c in COMMANDS])
def test_guide_command_is_accepted_by_its_tool(command):
    assert check(command.words) == [], f"docs/deploy.md line {command.line}: {command.text}"


def test_every_reference_entry_names_its_source():
    for name, tool in REFERENCE["tools"].items():
        assert tool["repo"] and tool["ref"], name
    for path, entry in REFERENCE["commands"].items():
        assert path.split()[0] in REFERENCE["tools"], path
        source = entry["source"]
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", source["repo"]), path
        assert source["ref"] and source["path"], path
        assert len(entry["args"]) == 2, path
        assert all(re.fullmatch(r"--?[A-Za-z0-9][\w-]*", flag) for flag in entry["flags"]), path


def test_every_reference_entry_is_used_by_the_guide():
    used = {resolve(c.words)[0] for c in COMMANDS}
    assert used == set(REFERENCE["commands"])


# The checker itself: it must refuse what the tools refuse.


@pytest.mark.parametrize("line,problem", [
    # The Databricks CLI takes the name from the JSON when --json is given (storage-credentials.go).
    ('databricks storage-credentials create segment_delta_lake --json "{}"', "positional argument(s) with --json"),
    ('databricks external-locations create a b --json "{}"', "positional argument(s) with --json"),
    ("databricks external-locations create only_a_name abfss://x/", "accepts 3"),
    ("databricks grants update catalog", "accepts 2"),
    ("databricks catalogs create c --storage-location abfss://x/", "unknown flag --storage-location"),
    ("databricks clusters list", "no command of the reference"),
    ("az functionapp list-consumption-locations", "no command of the reference"),
    ("az role assignment list --assignee x --everything", "unknown flag --everything"),
    ("az eventhubs eventhub show -g rg --namespace-name ns --hub-name hub", "unknown flag --hub-name"),
    ("func azure functionapp publish", "accepts 1"),
    ("func azure functionapp publish app --runtime custom", "unknown flag --runtime"),
])
def test_checker_refuses_what_the_tools_refuse(line, problem):
    (command,) = parse_shell(line + "\n")
    problems = check(command.words)
    assert any(problem in p for p in problems), problems


def test_shell_reading():
    text = (
        'export X="https://$(az databricks workspace show -g "$RG" -n "$W" --query workspaceUrl -o tsv)"\n'
        "out() { az deployment group show -g \"$RG\" --query \"p.$1.value\" -o tsv; }\n"
        'A="$(out x)" B=2 dist/app setup  # a comment\n'
        "(cd dist && func azure functionapp publish \"$APP\" --custom)\n"
        "databricks grants update catalog c --json \"{\\\"changes\\\": [\n"
        "  {\\\"add\\\": [\\\"X\\\"]}]}\"\n"
        "az role assignment create --role r \\\n  --scope \"$(az eventhubs eventhub show -g g --query id -o tsv)\"\n"
    )
    words = [c.words for c in parse_shell(text)]
    assert ["az", "databricks", "workspace", "show", "-g", "$RG", "-n", "$W", "--query", "workspaceUrl", "-o",
            "tsv"] in words
    assert ["az", "deployment", "group", "show", "-g", "$RG", "--query", "p.$1.value", "-o", "tsv"] in words
    assert ["dist/app", "setup"] in words
    assert ["func", "azure", "functionapp", "publish", "$APP", "--custom"] in words
    assert ["databricks", "grants", "update", "catalog", "c", "--json", '{"changes": [\n  {"add": ["X"]}]}'] in words
    assert ["az", "role", "assignment", "create", "--role", "r", "--scope", "$(...)"] in words
    assert ["az", "eventhubs", "eventhub", "show", "-g", "g", "--query", "id", "-o", "tsv"] in words
