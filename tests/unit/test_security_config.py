"""[auth] and [security]: tokens (inline and from a mounted file) validated by file and key without
echoing a secret, and what the allowlists admit (`taskherd.specs.admission`)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from taskherd.cli import main
from taskherd.config import from_dict
from taskherd.config.loader import tokens
from taskherd.config.settings import SecuritySettings
from taskherd.errors import ConfigError
from taskherd.specs import RunnerSpec, admission

H = hashlib.sha256(b"s3cret-token").hexdigest()


def test_a_tokens_file_in_toml_or_json_adds_its_tokens(tmp_path: Path) -> None:
    toml = tmp_path / "tokens.toml"
    toml.write_text(f'[[tokens]]\nname = "ci"\nsha256 = "{H}"\nscopes = ["read", "submit"]\n')
    js = tmp_path / "tokens.json"
    js.write_text(json.dumps([{"name": "ops", "sha256": hashlib.sha256(b"x").hexdigest(), "scopes": ["admin"]}]))
    for path, name in ((toml, "ci"), (js, "ops")):
        settings = from_dict({"auth": {"tokens_file": str(path)}})
        assert settings.auth.on
        assert [t.name for t in tokens(settings.auth)] == [name]


@pytest.mark.parametrize("content, problem", [
    ('[[tokens]]\nname = "ci"\nsha256 = "the-raw-token-by-mistake"\nscopes = ["read"]\n', "tokens.0.sha256: expected"),
    (f'[[tokens]]\nname = "ci"\nsha256 = "{H}"\nscopes = []\n', "tokens.0.scopes"),
    (f'[[tokens]]\nname = "ci"\nsha256 = "{H}"\nscopes = ["read"]\nsecret = "the-raw-token-by-mistake"\n',
     "tokens.0.secret: unknown key"),
    ("tokens = []\n", "tokens: empty"),
    ('tokens = "the-raw-token-by-mistake"\n', "tokens: expected a list"),
    ('tokens = [ "the-raw-token-by-mistake" \n', "not valid TOML"),
])
def test_a_bad_tokens_file_is_named_by_file_and_key_without_its_values(tmp_path: Path, content: str,
                                                                       problem: str) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(content)
    with pytest.raises(ConfigError) as raised:
        tokens(from_dict({"auth": {"tokens_file": str(path)}}).auth)
    text = str(raised.value)
    assert text.startswith(f"{path}: ") and problem in text, text
    assert "the-raw-token-by-mistake" not in text


def test_config_check_reads_the_tokens_file_and_never_shows_a_secret(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "prod.toml"
    config.write_text(f'[auth]\ntokens_file = "{tmp_path / "missing.toml"}"\ntokens = [{{ name = "a", '
                      f'sha256 = "raw-secret-here", scopes = ["read"] }}]\n')
    assert main(["config", "check", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: [auth].tokens.sha256: expected a value matching" in err and "raw-secret-here" not in err
    config.write_text(f'[auth]\ntokens_file = "{tmp_path / "missing.toml"}"\n')
    assert main(["config", "check", str(config)]) == 2
    assert f"{tmp_path / 'missing.toml'}: no such file" in capsys.readouterr().err


def test_duplicate_token_names_and_bad_allowlists_are_config_errors() -> None:
    twice = [{"name": "a", "sha256": H, "scopes": ["read"]}, {"name": "a", "sha256": "0" * 64, "scopes": ["read"]}]
    with pytest.raises(ConfigError, match=r"x.toml: \[auth\]: .*token name\(s\) a appear more than once"):
        from_dict({"auth": {"tokens": twice}}, "x.toml")
    with pytest.raises(ConfigError) as raised:
        from_dict({"security": {"exe_allow": ["python3"], "http_allow": ["ftp://x/"], "python_allow": ["a b"]}}, "x.toml")
    assert [p.split(":")[1].strip() for p in raised.value.problems] == \
        ["[security].exe_allow", "[security].http_allow", "[security].python_allow"]


def _admits(kind: str, target: object, auth_on: bool = True, **allow: list[str]) -> bool:
    return admission(RunnerSpec(kind, target), SecuritySettings(**{k: tuple(v) for k, v in allow.items()}),
                     auth_on) is None


def test_empty_lists_admit_everything_with_auth_off_and_nothing_with_auth_on() -> None:
    for kind, target in (("exe", ("/bin/sh",)), ("http", "https://x.example/"), ("python", "os:system")):
        assert _admits(kind, target, auth_on=False)
        assert not _admits(kind, target, auth_on=True)


@pytest.mark.parametrize("target, admitted", [
    ("/opt/tools/resize", True), ("/opt/tools/sub/resize", False), ("/opt/tools/../../bin/sh", False),
    ("/opt/toolsX/resize", False), ("/usr/bin/python3.11", True), ("/usr/local/bin/python3", False),
    ("/srv/any/depth/x", True),
])
def test_exe_globs_match_the_resolved_argv0(target: str, admitted: bool) -> None:
    allow = ["/opt/tools/*", "/usr/bin/python3*", "/srv/**"]
    assert _admits("exe", (target,), exe_allow=allow) is admitted


def test_a_bare_exe_name_is_resolved_on_path_before_matching() -> None:
    python = Path(sys.executable)
    spec = RunnerSpec("exe", (python.name,), env={"PATH": str(python.parent)})
    assert admission(spec, SecuritySettings(exe_allow=(str(python),)), True) is None
    assert "not found on PATH" in str(admission(RunnerSpec("exe", ("no-such-tool-xyz",)),
                                                SecuritySettings(exe_allow=("/**",)), True))


@pytest.mark.parametrize("url, admitted", [
    ("https://hooks.example/a", True), ("https://hooks.example", True), ("https://HOOKS.example/a", True),
    ("https://hooks.example.evil.net/a", False), ("https://hooks.example:8443/a", False),
    ("https://hooks.example@evil.net/a", False), ("http://hooks.example/a", False),
    ("http://127.0.0.1:9000/x", True), ("http://127.0.0.1:9000@evil.net/", False),
])
def test_http_prefixes_stop_at_a_boundary_and_see_through_userinfo(url: str, admitted: bool) -> None:
    assert _admits("http", url, http_allow=["https://hooks.example", "http://127.0.0.1:"]) is admitted


@pytest.mark.parametrize("target, admitted", [
    ("mypkg:f", True), ("mypkg.tasks:f", True), ("mypkg2.tasks:f", False), ("os:system", False),
    ("other.sub.x:f", True), ("other.subway:f", False), ("other:f", False),
])
def test_python_prefixes_are_whole_module_names(target: str, admitted: bool) -> None:
    assert _admits("python", target, python_allow=["mypkg", "other.sub"]) is admitted


def test_a_python_prefix_ending_in_a_dot_admits_only_submodules() -> None:
    assert _admits("python", "plugins.a:f", python_allow=["plugins."])
    assert not _admits("python", "plugins:f", python_allow=["plugins."])
