"""Book builds get one summary line per bar instead of hundreds of redraws."""

from adlib.training.progress import progress


def test_summary_mode_prints_one_line_per_bar(monkeypatch, capsys):
    monkeypatch.setenv("ADLIB_PROGRESS", "summary")
    for _ in progress(range(7), desc="categories"):
        pass
    inner = progress(total=3, desc="inner", leave=False)
    inner.update(3)
    inner.close()
    out = capsys.readouterr()
    assert out.out.splitlines() == [out.out.splitlines()[0]]
    assert out.out.startswith("categories: 7/7 in ")
    assert "\r" not in out.out and out.err == ""


def test_interactive_mode_is_tqdm(monkeypatch):
    monkeypatch.delenv("ADLIB_PROGRESS", raising=False)
    bar = progress(range(2), disable=True)
    assert type(bar).__name__ == "tqdm" or "tqdm" in type(bar).__module__
    bar.close()


def test_disabled_bars_stay_silent_and_close_cleanly_in_summary_mode(monkeypatch, capsys):
    monkeypatch.setenv("ADLIB_PROGRESS", "summary")
    bar = progress(total=3, disable=True)
    bar.update(3)
    bar.close()
    for _ in progress(range(2), disable=True):
        pass
    assert capsys.readouterr().out == ""
