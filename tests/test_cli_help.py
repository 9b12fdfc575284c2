"""The command line's help, choices, exit codes and shell completion, as a user meets them."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from providers.sandbox.server import SandboxServer
from schemas.messages import Provider
from tests.conftest import worker_env
from tests.helpers import payrecon_command
from worker.cli import main

ROOT = Path(__file__).resolve().parent.parent
#: How ``--provider`` is shown: ``[cinetpay|mtn_momo|orange_money|wave]``.
PROVIDERS = "[" + "|".join(p.value for p in Provider) + "]"


def commands(group: click.Group = main, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command under ``group``, groups included, with the words that name it."""
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


ALL = list(commands())


def test_the_walk_finds_every_command() -> None:
    names = {" ".join(path) for path, _ in ALL}
    assert {"worker", "beat", "sandbox", "dead-letters list", "report export", "ledger export"} <= names
    assert len(names) >= 30


@pytest.mark.parametrize(("path", "command"), ALL, ids=[" ".join(path) for path, _ in ALL])
def test_every_command_and_option_has_help_text_without_double_backticks(
    path: tuple[str, ...], command: click.Command
) -> None:
    """click shows docstrings as written: reST's double backticks would show up as they are."""
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "``" not in result.output
    assert (command.help or "").strip(), f"payrecon {' '.join(path)} has no description"
    assert command.help is not None and command.help.split()[0] in result.output
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), f"payrecon {' '.join(path)} {param.opts[0]} has no help text"
            assert param.opts[0] in result.output
    parent = CliRunner().invoke(main, [*path[:-1], "--help"]).output
    assert re.search(rf"^  {re.escape(path[-1])} +\S", parent, re.MULTILINE), parent  # the group's listing too


def test_json_says_what_it_prints_wherever_it_is() -> None:
    with_json = [path for path, command in ALL if any(p.name == "as_json" for p in command.params)]
    assert len(with_json) >= 10
    for path in with_json:
        assert "Print JSON on stdout" in CliRunner().invoke(main, [*path, "--help"]).output


def test_every_provider_option_is_a_choice_of_the_contracts_providers() -> None:
    found = []
    for path, command in ALL:
        for param in command.params:
            if param.name == "provider":
                found.append(" ".join(path))
                assert isinstance(param.type, click.Choice), " ".join(path)
                assert list(param.type.choices) == [p.value for p in Provider], " ".join(path)
                assert PROVIDERS in CliRunner().invoke(main, [*path, "--help"]).output
    assert {"payments show", "payments refund", "reconcile", "statements import"} <= set(found)
    wrong = CliRunner().invoke(main, ["payments", "show", "REF", "--provider", "paypal"])
    assert wrong.exit_code == 2 and "'paypal' is not one of 'cinetpay', 'mtn_momo'" in wrong.output


def test_sandbox_help_names_each_provider_it_serves() -> None:
    text = " ".join(CliRunner().invoke(main, ["sandbox", "--help"]).output.split())
    served = [p.name for p in SandboxServer().providers]
    assert served == [p.value for p in Provider]
    for shown in ("CinetPay", "MTN MoMo", "Orange Money", "Wave"):
        assert shown in text
    assert "CinetPay's wire format" not in text


#: What beat's help and the README's table call each entry of ``beat_schedule``.
BEAT_WORDS = {
    "recheck-due-payments": ("janitor", "PAYRECON_RECHECK_INTERVAL"),
    "expire-subscriptions": ("subscription expiry", "PAYRECON_EXPIRE_INTERVAL"),
    "send-reminders": ("renewal reminders", "every 10 minutes"),
    "deliver-events": ("event delivery", "PAYRECON_EVENTS_INTERVAL"),
    "nightly-reconciliation": ("nightly reconciliation", "PAYRECON_RECON_AT"),
    "purge": ("retention", "PAYRECON_RETENTION_DAYS"),
}


def test_beat_help_and_the_readme_name_everything_beat_schedules() -> None:
    from worker.app import app

    assert set(app.conf.beat_schedule) == set(BEAT_WORDS)  # a new entry needs its words here, and in the help
    text = " ".join(CliRunner().invoke(main, ["beat", "--help"]).output.split())
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `payrecon beat"))
    for words in BEAT_WORDS.values():
        for word in words:
            assert word in text, word
        assert words[0] in row, words[0]


@pytest.fixture
def env(pg_url: str, redis_url: str, sandbox_server: Any) -> dict[str, str]:
    return {**os.environ, **worker_env(pg_url, redis_url, sandbox_server)}


def payrecon(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [payrecon_command(), *args], env=env, input=stdin, capture_output=True, text=True, check=False, timeout=60
    )


def test_a_bad_input_file_exits_2_like_bad_usage(env: dict[str, str], tmp_path: Path) -> None:
    """enqueue, statements import and subscriptions import refuse a bad file alike: exit 2, as click
    does for a bad option, with the problem on stderr and nothing on stdout."""
    bad_json = tmp_path / "payments.jsonl"
    bad_json.write_text("{oops\n", encoding="utf-8")
    bad_statement = tmp_path / "statement.csv"
    bad_statement.write_text(
        "transaction_id,operator_id,payment_date,amount,currency,status\nT1,,nope,5000,XOF,ACCEPTED\n"
    )
    bad_subscriptions = tmp_path / "subscriptions.csv"
    bad_subscriptions.write_text("account,plan,ends_at\ntech-1,gold,2099-01-31\n", encoding="utf-8")
    cases = {
        "enqueue": (["enqueue", "payment", str(bad_json)], "line 1: not JSON"),
        "statements import": (["statements", "import", "--provider", "cinetpay", str(bad_statement)], "line 2: time"),
        "subscriptions import": (["subscriptions", "import", str(bad_subscriptions), "--by", "m"], "unknown plan"),
        "bad usage": (["statements", "import", "--provider", "paypal", str(bad_statement)], "Invalid value"),
    }
    for name, (args, problem) in cases.items():
        result = payrecon(env, *args)
        assert (result.returncode, result.stdout) == (2, ""), (name, result)
        assert problem in result.stderr, (name, result.stderr)


def test_the_readme_states_the_exit_codes_and_completion_that_work(tmp_path: Path) -> None:
    """Shell completion as the README says to enable it: click's completion script for each shell."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "Exit codes: 0 ok, 1 failure, 2 bad usage or bad input" in readme
    scripts = (("bash", "complete -o nosort -F _payrecon_completion payrecon"), ("zsh", "#compdef payrecon"),
               ("fish", "complete --no-files --command payrecon"))  # fmt: skip
    for shell, marker in scripts:
        assert f"_PAYRECON_COMPLETE={shell}_source payrecon" in readme, shell
        script = subprocess.run(
            [payrecon_command()], env={**os.environ, "_PAYRECON_COMPLETE": f"{shell}_source"},
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert script.returncode == 0 and marker in script.stdout, (shell, script)
    words = subprocess.run(
        [payrecon_command()],
        env={**os.environ, "_PAYRECON_COMPLETE": "bash_complete", "COMP_WORDS": "payrecon stat", "COMP_CWORD": "1"},
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert words.stdout.splitlines() == ["plain,statements"]
