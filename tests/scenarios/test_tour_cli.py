"""``emu scenario``: what a user types and sees (output text, files, exit status)."""

from __future__ import annotations

import os
from pathlib import Path

from emu.cli import main
from emu.scenarios import registry
from emu.scenarios.registry import ORDER, Scenario

GOLDEN = Path(__file__).with_name("golden")


def test_list_names_every_scenario_in_order(capsys):
    assert main(["scenario", "list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == list(ORDER)


def test_an_unknown_name_prints_the_list(capsys):
    assert main(["scenario", "run", "private-adress-spaces"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "emu: error: no scenario named 'private-adress-spaces'; the scenarios are:"
    assert [line.strip() for line in err[1:]] == list(ORDER)


def test_usage_errors_are_one_line(capsys):
    for argv in (["scenario"], ["scenario", "run"], ["scenario", "run", "--all", "private-handles"],
                 ["scenario", "run", "--bogus"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("emu: error: ") and err.count("\n") == 1, (argv, err)


def test_an_output_folder_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["scenario", "run", "private-handles", "--out", str(blocker / "pages")]) == 2
    err = capsys.readouterr().err
    assert err == f"emu: error: --out {blocker / 'pages'}: cannot create it: Not a directory\n"
    assert main(["scenario", "run", "private-handles", "--out", str(blocker)]) == 2
    assert capsys.readouterr().err == f"emu: error: --out {blocker}: not a folder\n"


def test_one_scenario_matches_its_golden_transcript(capsys):
    """The narration of private-handles, word for word. After an intended change, refresh it:
    EMU_UPDATE_GOLDEN=1 .venv/bin/pytest tests/scenarios/test_tour_cli.py"""
    assert main(["scenario", "run", "private-handles"]) == 0
    out = capsys.readouterr().out
    golden = GOLDEN / "private-handles.txt"
    if os.environ.get("EMU_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(out)
    assert out == golden.read_text()


def test_pages_are_written_with_an_index(tmp_path, capsys):
    assert main(["scenario", "run", "private-handles", "app-crash-is-contained",
                 "--out", str(tmp_path / "pages")]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "pages").iterdir()) == [
        "app-crash-is-contained-steps.html", "app-crash-is-contained.html", "index.html",
        "private-handles-steps.html", "private-handles.html"]
    assert out.splitlines()[-2:] == [f"Pictures: {tmp_path / 'pages' / 'index.html'}",
                                     "The tour: 2 scenarios, 2 held their claims."]


def test_a_claim_that_fails_exits_1_and_says_which(monkeypatch, capsys):
    def play_it(stage) -> None:
        with stage.act("hello", apps=[("hello",)]) as act:
            act.run()
        stage.check("hello prints nothing", not act.procs[0].output,
                    f"it printed {bytes(act.procs[0].output)!r}")

    registry.load()
    monkeypatch.setitem(registry.REGISTRY, "broken", Scenario("broken", "a false claim", "-",
                                                              (), play_it))
    assert main(["scenario", "run", "broken"]) == 1
    captured = capsys.readouterr()
    assert "=> broken: FAILED" in captured.out
    assert captured.err == ("FAILED broken: hello prints nothing: observed it printed "
                            "b'Hello, world!\\n'\n")


# About 4 s on this 2-core machine: the whole tour, each act played a second time, silently,
# to record its steppable page; that every scenario holds and writes its pages is the check.
def test_the_whole_tour_holds(capsys, tmp_path: Path):
    assert main(["scenario", "run", "--all", "--out", str(tmp_path)]) == 0
    for name in ORDER:        # every scenario's steppable page (docs/tour.md), under 2 MB
        page = tmp_path / f"{name}-steps.html"
        assert page.is_file() and 0 < page.stat().st_size < 2_000_000, name
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"The tour: {len(ORDER)} scenarios, {len(ORDER)} held " \
        "their claims."
    assert out.count("the claim holds") == len(ORDER)


def test_the_narration_docs_show_is_the_one_the_tour_prints(capsys):
    """docs/tour.md's "Reading the narration" lines are arbitrary-thread-context's: each
    line the doc shows, up to its "...", begins a line of the narration."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "tour.md").read_text()
    block = doc.split("## Reading the narration", 1)[1].split("```\n", 2)[1]
    shown = [line.rsplit("...", 1)[0] for line in block.splitlines()]
    assert len(shown) == 3
    assert main(["scenario", "run", "arbitrary-thread-context"]) == 0
    out = capsys.readouterr().out.splitlines()
    for line in shown:
        assert any(said.startswith(line) for said in out), line
