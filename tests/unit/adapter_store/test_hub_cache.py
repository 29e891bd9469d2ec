"""Hub ids resolved in a local Hugging Face cache (deltaserve/adapter_store/hub_cache.py).

The cache is laid out as huggingface_hub lays it out (tests/hub_cache_layout.py) and read
through huggingface_hub's own API; nothing here reaches a network. The environment variables
(HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE) are read by huggingface_hub when it is imported, so
those tests run the resolution in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir, snapshot_download

from deltaserve.adapter_store import ingest as ing
from deltaserve.adapter_store.content import ContentStore, pack_dir
from deltaserve.adapter_store.errors import AdapterForbiddenError, BadSourceError
from deltaserve.adapter_store.hub_cache import (
    HubRef,
    NotInHubCacheError,
    ResolvedModel,
    cached_snapshot,
    parse_hub_ref,
    resolve_model,
)
from tests.hub_cache_layout import add_snapshot, fake_commit
from tests.unit.adapter_store.helpers import write_lora

ROOT = Path(__file__).resolve().parents[3]
MAIN, V1 = fake_commit("main"), fake_commit("v1")


def _model_dir(path: Path, layers: int) -> Path:
    """A stand-in model directory: resolution never opens the weights."""
    (path / "sub").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"num_hidden_layers": layers}))
    (path / "sub" / "extra.txt").write_text("nested files are cached too")
    return path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """acme/tiny at two commits (main; the tag v1.0) and an adapter repo acme/tiny-lora."""
    hub = tmp_path / "hub"
    add_snapshot(hub, "acme/tiny", _model_dir(tmp_path / "m1", 1), V1, refs=("v1.0",))
    add_snapshot(hub, "acme/tiny", _model_dir(tmp_path / "m2", 2), MAIN)
    add_snapshot(hub, "acme/tiny-lora", write_lora(tmp_path / "lora"), MAIN)
    return hub


def _layers(path: Path) -> int:
    return json.loads((path / "config.json").read_text())["num_hidden_layers"]


def test_the_layout_is_huggingface_hubs_own(cache: Path) -> None:
    repos = {r.repo_id: r for r in scan_cache_dir(cache).repos}
    assert set(repos) == {"acme/tiny", "acme/tiny-lora"}
    tiny = repos["acme/tiny"]
    assert {r.commit_hash: set(r.refs) for r in tiny.revisions} == {MAIN: {"main"}, V1: {"v1.0"}}
    assert all(r.nb_files == 2 for r in tiny.revisions) and not scan_cache_dir(cache).warnings
    found = snapshot_download("acme/tiny", revision="v1.0", cache_dir=cache, local_files_only=True)
    assert Path(found).name == V1


@pytest.mark.parametrize(
    "text, revision, expected",
    [
        ("acme/tiny", None, HubRef("acme/tiny")),
        ("gpt2", None, HubRef("gpt2")),
        ("acme/tiny@v1.0", None, HubRef("acme/tiny", "v1.0")),
        ("acme/tiny", "refs/pr/1", HubRef("acme/tiny", "refs/pr/1")),
        ("acme/tiny@v1.0", "v1.0", HubRef("acme/tiny", "v1.0")),
        ("/models/tiny", None, None),
        ("./tiny", None, None),
        ("~/tiny", None, None),
        ("a/b/c", None, None),
        ("", None, None),
    ],
)
def test_parse_hub_ref(text: str, revision: str | None, expected: HubRef | None) -> None:
    assert parse_hub_ref(text, revision) == expected


@pytest.mark.parametrize("text, revision", [
    ("acme/tiny@v1", "v2"), ("acme/tiny@../../x", None), ("acme/tiny", "/etc"),
    ("acme/tiny", "a b"),
])  # fmt: skip
def test_conflicting_or_unsafe_revisions_are_refused(text: str, revision: str | None) -> None:
    with pytest.raises(ValueError, match="revision"):
        parse_hub_ref(text, revision)


def test_resolution_by_id_ref_and_sha(cache: Path) -> None:
    main = cached_snapshot(HubRef("acme/tiny"), cache)
    assert main.name == MAIN and _layers(main) == 2
    assert _layers(cached_snapshot(HubRef("acme/tiny", "v1.0"), cache)) == 1
    assert _layers(cached_snapshot(HubRef("acme/tiny", V1), cache)) == 1
    by_at = resolve_model("acme/tiny@v1.0", None, cache)
    assert by_at.hub_ref == HubRef("acme/tiny", "v1.0") and by_at.path.name == V1
    assert (by_at.path / "sub" / "extra.txt").read_text() == "nested files are cached too"


@pytest.mark.parametrize("ref", [HubRef("acme/absent"), HubRef("acme/tiny", "v9"),
                                 HubRef("acme/tiny", "f" * 40)])  # fmt: skip
def test_not_cached_names_the_id_and_the_cache(cache: Path, ref: HubRef) -> None:
    with pytest.raises(NotInHubCacheError) as err:
        cached_snapshot(ref, cache)
    message = str(err.value)
    assert f"`{ref.repo_id}` (revision {ref.revision or 'main'})" in message
    assert str(cache) in message and "never downloads" in message
    assert isinstance(err.value, OSError)  # `deltaserve serve` reports it as a start-up error


def test_a_local_directory_wins(cache: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _model_dir(tmp_path / "acme" / "tiny", 7)
    found = resolve_model("acme/tiny", None, cache)
    assert found.hub_ref is None and _layers(found.path) == 7
    missing = str(tmp_path / "nowhere")  # not a hub id: left to the engine, as before
    assert resolve_model(missing, None, cache) == ResolvedModel(Path(missing), None)


# ---- adapters from the hub cache --------------------------------------------------------

def test_adapter_sources_by_hub_id(cache: Path, tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    staged.mkdir()
    nbytes = ing.stage_source("acme/tiny-lora", [], staged, 1 << 20, hub_cache=cache)
    assert nbytes > 0 and not (staged / "adapter_model.safetensors").is_symlink()
    assert sorted(p.name for p in staged.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]


def test_a_hub_origin_is_read_again_from_the_cache(cache: Path, tmp_path: Path) -> None:
    """Another replica (or this one, after evicting the copy) re-reads the registered source."""
    content = ContentStore(tmp_path / "data")
    blob = ing.read_origin("path:acme/tiny-lora", [], content, 1 << 20, hub_cache=cache)
    staged = tmp_path / "staged"
    staged.mkdir()
    ing.stage_source("acme/tiny-lora", [], staged, 1 << 20, hub_cache=cache)
    assert blob is not None and blob == pack_dir(staged)
    assert ing.read_origin("path:acme/tiny-lora", [], content, 1 << 20) is None  # not allowed


def test_hub_adapter_sources_need_the_operators_consent(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(AdapterForbiddenError, match="--allow-hub-adapters") as err:
        ing.stage_source("acme/tiny-lora", [tmp_path], tmp_path / "s", 1 << 20)
    assert err.value.code == "source_not_allowed"


def test_hub_adapter_source_errors(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(BadSourceError, match="acme/nope") as err:
        ing.stage_source("acme/nope", [], tmp_path / "s", 1 << 20, hub_cache=cache)
    assert err.value.code == "not_in_hub_cache" and err.value.status == 400
    with pytest.raises(BadSourceError, match="revision"):
        ing.stage_source("acme/tiny-lora@../x", [], tmp_path / "s", 1 << 20, hub_cache=cache)


# ---- the environment, as huggingface_hub reads it ---------------------------------------

RESOLVE = """
import json, sys
from deltaserve.adapter_store.hub_cache import NotInHubCacheError, resolve_model
out = {}
for model in sys.argv[1:]:
    try:
        out[model] = str(resolve_model(model).path)
    except NotInHubCacheError as exc:
        out[model] = str(exc)
print(json.dumps(out))
"""


@pytest.mark.parametrize("where, offline", [("HF_HOME", "1"), ("HF_HOME", None),
                                            ("HF_HUB_CACHE", "1")])  # fmt: skip
def test_environment_and_no_network(cache: Path, where: str, offline: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env[where] = str(cache.parent if where == "HF_HOME" else cache)  # HF_HOME/hub is the cache
    if offline:
        env["HF_HUB_OFFLINE"] = offline
    with socket.socket() as hub:  # a "hub" on loopback that would see any request
        hub.bind(("127.0.0.1", 0))
        hub.listen()
        hub.setblocking(False)
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{hub.getsockname()[1]}"
        run = subprocess.run(
            [sys.executable, "-c", RESOLVE, "acme/tiny@v1.0", "acme/absent"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
        )
        with pytest.raises(BlockingIOError):
            hub.accept()  # nobody connected
    got = json.loads(run.stdout)
    assert Path(got["acme/tiny@v1.0"]).name == V1
    assert str(cache) in got["acme/absent"] and "never downloads" in got["acme/absent"]
