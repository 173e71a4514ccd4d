"""``emu scenario run --out``: a page that cannot be written after the scenarios played is one
line, and the scenarios' own verdict (exit status 0 or 1) stands."""

from __future__ import annotations

from emu.cli import main


def test_a_page_failing_after_the_run_keeps_the_verdict(tmp_path, capsys, monkeypatch):
    from emu.scenarios import html

    def full_disk(_result):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(html, "page", full_disk)
    out = tmp_path / "pages"
    assert main(["scenario", "run", "private-handles", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"emu: error: cannot write the pages into {out}: No space left on "
                            "device\n")
    assert "private-handles" in captured.out
