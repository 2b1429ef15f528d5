"""Settings that moved to `[retry]` are still read from `[manager]`, with a message naming the new key;
`taskherd config check` reports both the problems and the deprecations."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskherd.cli import main
from taskherd.config.loader import check
from taskherd.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "old.toml"
    path.write_text(text)
    return path


def test_old_retry_keys_are_read_into_the_retry_section_with_a_deprecation_each(tmp_path: Path) -> None:
    path = _write(tmp_path, "[manager]\nretry_backoff_base_s = 0.5\nretry_backoff_max_s = 9.0\n"
                            "default_max_attempts = 7\nanalyzer_slots = 4\n")
    settings, deprecated = check(path)
    assert (settings.retry.backoff_base_s, settings.retry.backoff_max_s, settings.retry.max_attempts) == (0.5, 9.0, 7)
    assert sorted(deprecated) == sorted([
        f"{path}: [manager].retry_backoff_base_s is deprecated: use [retry].backoff_base_s",
        f"{path}: [manager].retry_backoff_max_s is deprecated: use [retry].backoff_max_s",
        f"{path}: [manager].default_max_attempts is deprecated: use [retry].max_attempts",
        f"{path}: [manager].analyzer_slots is deprecated and ignored: it was never used; remove it",
    ])


def test_a_key_set_under_its_old_and_new_name_is_an_error_naming_both(tmp_path: Path) -> None:
    path = _write(tmp_path, "[manager]\nretry_backoff_base_s = 0.5\n[retry]\nbackoff_base_s = 2.0\n")
    with pytest.raises(ConfigError) as caught:
        check(path)
    assert caught.value.problems == [f"{path}: [manager].retry_backoff_base_s: deprecated and also set as "
                                     f"[retry].backoff_base_s; keep only [retry].backoff_base_s"]


def test_config_check_prints_deprecations_as_warnings_and_still_passes(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "[manager]\nretry_backoff_max_s = 9.0\n")
    assert main(["config", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "ok"
    assert err.strip() == f"warning: {path}: [manager].retry_backoff_max_s is deprecated: use [retry].backoff_max_s"


def test_config_check_reports_a_bad_value_under_an_old_key_by_its_new_name(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, '[manager]\ndefault_max_attempts = "three"\n')
    assert main(["config", "check", str(path)]) == 2
    assert "[retry].max_attempts: wrong type: expected an integer" in capsys.readouterr().err
