"""Help texts a newcomer can trust: every option's default is shown (its value, or what happens
when it is left out), and no command summary is cut."""
import click
from click.testing import CliRunner

from sjunet.cli.main import main


def _commands(cmd, path):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, [*path, name])


def test_every_default_is_shown():
    """An option with a default shows it (``[default: …]``) or says in its help what it is; flags
    (off unless given) and repeatable options (none unless given) need not."""
    missing = []
    for path, cmd in _commands(main, ["sjunet"]):
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.name in ("help", "version") or p.required:
                continue
            if p.is_flag or (p.multiple and not isinstance(p.default, (list, tuple))):
                continue
            shown = p.show_default and p.default is not None
            if not shown and "default" not in (p.help or "").lower():
                missing.append(f"{' '.join(path)} {p.opts[-1]}")
    assert missing == []
    out = " ".join(CliRunner().invoke(main, ["finetune", "--help"], terminal_width=100).output.split()).lower()
    assert "[default: auto]" in out and "[default: label]" in out and "default: none, no time limit" in out


def test_no_command_summary_is_cut():
    for path, cmd in _commands(main, ["sjunet"]):
        if isinstance(cmd, click.Group):
            out = CliRunner().invoke(main, [*path[1:], "--help"], terminal_width=80).output
            listed = out.split("Commands:")[1]
            assert "..." not in listed, listed
            assert all(name in listed for name in cmd.commands)
