"""`kcomp prep` passes a preset only the options it declares; any other is refused before anything is read."""

from __future__ import annotations

import pytest

from kcomp.competitions import get_competition, list_competitions
from tests.conftest import run_cli

# option -> (its value, the presets whose prep takes it)
PREP_OPTIONS = {
    "--seed": ("3", {"demo"}),
    "--size": ("64", {"cassava", "clouds", "demo", "siim-covid19"}),
    "--workers": ("0", {"cassava", "clouds", "demo", "siim-covid19"}),
    "--bits": ("16", {"siim-covid19"}),
    "--skip-bad": (None, {"siim-covid19"}),
    "--split-fragment": ("2", {"vesuvius"}),
}


def test_each_preset_declares_the_options_it_takes():
    import inspect

    for name in list_competitions():
        params = set(inspect.signature(get_competition(name).prep).parameters) - {"raw", "out"}
        declared = {opt for opt, (_, presets) in PREP_OPTIONS.items() if name in presets}
        assert {f"--{p.replace('_', '-')}" for p in params} == declared, name


@pytest.mark.parametrize(("preset", "option"), [("cassava", "--bits"), ("vesuvius", "--workers"),
                                                ("clouds", "--split-fragment"), ("demo", "--skip-bad")])
def test_an_option_of_another_preset_is_refused(tmp_path, preset, option):
    value = PREP_OPTIONS[option][0]
    r = run_cli("prep", preset, tmp_path / "raw", "-o", tmp_path / "data", option, *([value] if value else []))
    assert r.code == 2, r.stderr
    assert r.last_error_line.startswith(f"kcomp: error: {option} does not apply to competition {preset} (it reads ")
    assert not (tmp_path / "data").exists()
