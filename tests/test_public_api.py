"""The package's public names: sorted, complete, importable."""

from __future__ import annotations

import runner


def test_all_is_sorted_and_complete() -> None:
    assert runner.__all__ == sorted(runner.__all__)
    public = {n for n in dir(runner) if not n.startswith("_")}  # names load lazily
    modules = {n for n in public if type(getattr(runner, n)).__name__ == "module"}
    assert set(runner.__all__) == public - modules
    for name in runner.__all__:
        assert getattr(runner, name) is not None
