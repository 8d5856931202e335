"""The configuration file and its command-line overrides."""

import os

import pytest

from memonlined import config

ETC = os.path.join(os.path.dirname(__file__), "..", "etc", "memonlined.conf")


def write(tmp_path, text):
    path = tmp_path / "memonlined.conf"
    path.write_text(text)
    return str(path)


def test_shipped_file_is_the_defaults():
    assert config.load(ETC, {}) == config.Config()


def test_shipped_file_names_every_key_with_its_default():
    text = open(ETC).read()
    defaults = config.Config()
    for name in config.KEYS:
        value = getattr(defaults, name)
        shown = ("yes" if value else "no") if isinstance(value, bool) else value
        assert f"#{name} = {shown}\n" in text


def test_the_man_page_names_every_key_in_its_section_default_first():
    """man/memonlined.conf.5: ".B key = default [| other values]" under ".SH [section]", for
    the keys of config.KEYS and no others."""
    man = os.path.join(os.path.dirname(ETC), "..", "man", "memonlined.conf.5")
    section, shown = None, {}
    for line in open(man):
        if line.startswith(".SH "):
            section = line[4:].strip().strip("[]")
        elif line.startswith(".B ") and " = " in line:
            name, values = line[3:].split(" = ", 1)
            shown[name] = (section, values.split(" | ")[0].strip())
    defaults = config.Config()
    expected = {}
    for name, key in config.KEYS.items():
        value = getattr(defaults, name)
        expected[name] = (key.section, ("yes" if value else "no") if isinstance(value, bool) else str(value))
    assert shown == expected


def test_missing_default_file_means_defaults(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.conf"))
    assert config.load(None, {}) == config.Config()


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(config.ConfigError, match="absent.conf: cannot read"):
        config.load(str(tmp_path / "absent.conf"), {})


def test_values_and_command_line_precedence(tmp_path):
    path = write(tmp_path, "[policy]\nratio = 150\nnuma_aware = no\n[overrides]\ndax = movable\n"
                           "PNP0C80:00 = kernel\n")
    s = config.load(path, {"ratio": "200"}, ["virtio-mem=kernel"])
    assert (s.ratio, s.numa_aware) == (200, False)
    assert s.overrides == {"dax": "movable", "PNP0C80:00": "kernel", "virtio-mem": "kernel"}


@pytest.mark.parametrize("text, message", [
    ("[policy]\nratoi = 3\n", r"invalid key ratoi in \[policy\]"),
    ("[policy]\nratio = -1\n", "invalid value '-1' for ratio in .policy.: expected a whole number"),
    ("[policy]\nnuma_aware = maybe\n", "expected yes or no"),
    ("[policy]\npolicy = sometimes\n", "expected auto-movable | movable | kernel"),
    ("[polcy]\nratio = 3\n", r"invalid section \[polcy\]"),
    ("ratio = 3\n", "File contains no section headers"),
    ("[overrides]\ndax = upwards\n", "invalid value 'upwards' for override dax"),
    ("[policy]\nratio = 3\nratio = 4\n", "already exists"),
])
def test_bad_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError, match=message) as e:
        config.load(path, {})
    assert str(e.value).startswith(path) and "\n" not in str(e.value)


def test_bad_command_line_values():
    with pytest.raises(config.ConfigError, match="--ratio: invalid value 'lots'"):
        config.load(os.devnull, {"ratio": "lots"})
    with pytest.raises(config.ConfigError, match="--override: invalid value 'dax'"):
        config.load(os.devnull, {}, ["dax"])


def test_world_writable_file_warns(tmp_path, caplog):
    path = write(tmp_path, "[policy]\nratio = 3\n")
    os.chmod(path, 0o666)
    config.load(path, {})
    assert "writable by every user" in caplog.text


def test_the_readmes_example_with_comments_after_values_loads(tmp_path):
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    example = readme.split("## Configuration", 1)[1].split("```\n", 2)[1]
    assert "# or movable, kernel" in example
    settings = config.load(write(tmp_path, example), {})
    assert settings.ratio == 301 and settings.policy == "auto-movable" and settings.kernel_floor_mib == 0
    assert settings.overrides == {"dax": "movable", "PNP0C80:00": "kernel"}


def test_a_default_section_is_an_error_not_ignored(tmp_path):
    with pytest.raises(config.ConfigError, match=r"invalid section \[DEFAULT\]: expected \[daemon\]"):
        config.load(write(tmp_path, "[DEFAULT]\nratio = 0\n"), {})
