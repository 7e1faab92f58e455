import pytest

from mstlake import config as cfg


def test_defaults_load_with_the_mst_numbers(instrument):
    det = instrument.detector
    assert det.shape == (6288, 9576)
    assert det.gain_e_per_adu == 0.25 and det.read_noise_e == 1.03 and det.saturation_adu == 50000
    assert {name: t.band for name, t in instrument.telescopes.items()} == {"MST1": "i", "MST2": "g", "MST3": "r"}
    assert instrument.site.utc_offset_hours == 8.0


def test_field_f02_is_marked_placeholder():
    f02 = cfg.load_field("f02")
    assert f02.centre_is_placeholder and (f02.width_deg, f02.height_deg) == (2.29, 1.53)


def _copy_config(tmp_path, instrument_text_edit=None):
    import shutil

    from mstlake.paths import bundled_dir

    target = tmp_path / "ingest"
    shutil.copytree(bundled_dir("ingest"), target)
    if instrument_text_edit:
        path = target / "pipeline.toml"
        path.write_text(instrument_text_edit(path.read_text()))
    return target


@pytest.mark.parametrize(
    ("setting", "changed", "message"),
    [
        ("stats_stride = 4", "stats_stride = 4\nstats_strid = 3", r"pipeline\.toml.*stats_strid"),  # an unknown key, with its file
        ("stats_stride = 4", 'stats_stride = "four"', "stats_stride: expected an integer"),
        ('aperture_correction = "model"', 'aperture_correction = "modle"', '"model" or "direct"'),
        ("scene_passes = 1", "scene_passes = -1", "stack.scene_passes must be >= 0"),
        ("forced_iterations = 4", "forced_iterations = 0", "stack.forced_iterations must be >= 1"),
        ("forced_match_radius_px = 2.0", "forced_match_radius_px = 0.0", "stack.forced_match_radius_px must be positive"),
        ("background_without_stars = true", 'background_without_stars = "yes"', "background_without_stars"),
    ],
    ids=["unknown-key", "wrong-type", "unknown-aperture-correction", "negative-scene-passes", "stack-forced-fit-without-iterations", "stack-match-radius", "stack-background-flag"],
)
def test_a_bad_setting_is_an_error_naming_it(tmp_path, setting, changed, message):
    directory = _copy_config(tmp_path, lambda text: text.replace(setting, changed))
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load_pipeline(directory)


def test_unknown_field_lists_known_ones():
    with pytest.raises(cfg.ConfigError, match="known fields: .*f02"):
        cfg.load_field("f99")


def test_configs_are_frozen(instrument):
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        instrument.detector.gain_e_per_adu = 1.0
