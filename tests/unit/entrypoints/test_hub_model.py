"""`--model` and adapter sources by Hugging Face hub id: settings, CLI, start-up errors.

The cache is laid out as huggingface_hub lays it out (tests/hub_cache_layout.py); the server
with a real model over it is tested in tests/integration/server/test_hub_models.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deltaserve.adapter_store.hub_cache import NotInHubCacheError
from deltaserve.entrypoints.cli import main as cli
from deltaserve.entrypoints.engine_factory import with_model_dir
from deltaserve.entrypoints.settings import Settings
from deltaserve.entrypoints.store_factory import hub_adapter_cache
from tests.hub_cache_layout import add_snapshot, fake_commit

MAIN, V1 = fake_commit("main"), fake_commit("v1")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    for commit, ref in ((V1, "v1.0"), (MAIN, "main")):
        source = tmp_path / commit
        source.mkdir()
        (source / "config.json").write_text(json.dumps({"ref": ref}))
        add_snapshot(tmp_path / "hub", "acme/tiny", source, commit, refs=(ref,))
    return tmp_path / "hub"


def test_a_hub_id_becomes_its_snapshot_and_names_the_base_model(cache: Path) -> None:
    s = with_model_dir(Settings(model="acme/tiny", hub_cache=cache))
    assert Path(s.model).name == MAIN and s.base_model_id == "acme/tiny"
    assert Path(with_model_dir(Settings(model="acme/tiny@v1.0", hub_cache=cache)).model).name == V1
    by_flag = with_model_dir(Settings(model="acme/tiny", revision=V1, hub_cache=cache))
    assert Path(by_flag.model).name == V1
    named = with_model_dir(Settings(model="acme/tiny", served_model_name="t", hub_cache=cache))
    assert named.base_model_id == "t"


def test_directories_and_other_paths_are_unchanged(cache: Path, tmp_path: Path) -> None:
    for model in (str(tmp_path), str(tmp_path / "not-there")):
        settings = Settings(model=model, hub_cache=cache)
        assert with_model_dir(settings) is settings


def test_an_uncached_hub_id_stops_serve_with_a_clear_error(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(NotInHubCacheError):
        with_model_dir(Settings(model="acme/tiny@v2", hub_cache=cache))
    assert cli.main(["serve", "--model", "acme/absent", "--hub-cache", str(cache)]) == 2
    err = capsys.readouterr().err
    assert "`acme/absent` (revision main)" in err and str(cache) in err
    assert "never downloads" in err


def test_hub_flags_and_help(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    captured: dict[str, Settings] = {}
    monkeypatch.setitem(cli.SUBCOMMANDS, "serve", cli.Subcommand(
        "x", Settings, lambda s: captured.setdefault("s", s) and 0))  # fmt: skip
    monkeypatch.setenv("DELTASERVE_HUB_CACHE", "/caches/hub")
    cli.main(["serve", "--model", "acme/tiny", "--revision", "v1.0", "--allow-hub-adapters"])
    s = captured["s"]
    assert (s.model, s.revision, s.hub_cache, s.allow_hub_adapters) == (
        "acme/tiny", "v1.0", Path("/caches/hub"), True)
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--model DIR|HUB_ID" in help_text and "--revision REV" in help_text
    assert "never downloads" in help_text and "--hub-cache DIR" in help_text


def test_hub_adapters_only_where_the_operator_allows_them(tmp_path: Path) -> None:
    cache = tmp_path / "hf" / "hub"
    assert hub_adapter_cache(Settings(model="m", hub_cache=cache)) is None
    assert hub_adapter_cache(Settings(model="m", hub_cache=cache, allow_hub_adapters=True)) == cache
    listed = Settings(model="m", hub_cache=cache, adapter_source_root=[tmp_path / "hf"])
    assert hub_adapter_cache(listed) == cache
    other = Settings(model="m", hub_cache=cache, adapter_source_root=[tmp_path / "adapters"])
    assert hub_adapter_cache(other) is None
