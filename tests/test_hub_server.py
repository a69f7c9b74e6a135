"""Drive the TEST Hub server (tests/hub_server.py) with the real, unpatched huggingface_hub client.

These tests pin down the protocol of the installed huggingface_hub (2.4.0, Xet disabled) so that publishing code
can be tested end to end against ``HubTestServer``. Findings worth knowing when writing publishing code:

* ``create_repo(private=True)`` sends ``{"visibility": "private"}`` (not ``"private": true``) to /api/repos/create.
* ``upload_folder`` (Xet disabled) = validate-yaml (README.md, twice) -> preupload -> LFS batch -> PUT (no auth
  header) -> verify -> ONE NDJSON commit. With ``hf_xet`` installed and Xet enabled it would take a different,
  multi-commit "pipelined" path that needs a Xet CAS server: hence ``HF_HUB_DISABLE_XET=1``.
* The commit POST is NOT retried by the client: a 500 on /commit/ surfaces immediately as ``HfHubHTTPError``
  (``_send_commit`` uses a plain ``session.post``; only the Xet pipeline passes ``retry_on_error=True``). The
  preupload, LFS batch, LFS PUT/verify and tree-listing calls go through ``http_backoff`` and ARE retried on
  408/429/5xx (5 retries, 1 s initial wait, doubling, capped at 8 s). Our publishing code must retry the commit.
* Re-uploading identical content makes no commit: the preupload answer carries the remote ``oid`` and the client
  drops unchanged files; if nothing is left it only calls ``repo_info`` and returns a ``CommitInfo`` pointing to
  the current head.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import struct
import zlib
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

try:
    from hub_server import DEFAULT_TOKEN, HubTestServer, git_blob_sha1, use_hub_server
except ImportError:  # tests/ imported as a package
    from tests.hub_server import DEFAULT_TOKEN, HubTestServer, git_blob_sha1, use_hub_server

READ_ONLY_TOKEN = "hf_read_only_token"
REPO_ID = "test-user/tiny-mm-model"
EXPECTED_FILES = {".gitattributes", "README.md", "config.json", "model.safetensors", "assets/preview.png"}


def _safetensors_bytes(n_floats: int = 25_000) -> bytes:
    """A valid safetensors file of ~100 KB (one F32 tensor), built with the stdlib."""
    rng = random.Random(0)
    payload = struct.pack(f"<{n_floats}f", *(rng.random() for _ in range(n_floats)))
    header = json.dumps({"weight": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, len(payload)]}})
    header_bytes = header.encode().ljust((len(header) + 7) // 8 * 8)
    return struct.pack("<Q", len(header_bytes)) + header_bytes + payload


def _png_bytes() -> bytes:
    """A valid 1x1 RGB PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def hub_server(monkeypatch, tmp_path):
    with HubTestServer(read_only_tokens={READ_ONLY_TOKEN}) as server:
        use_hub_server(monkeypatch, server, cache_dir=tmp_path / "hf-cache")
        yield server


@pytest.fixture
def api(hub_server):
    return HfApi(endpoint=hub_server.endpoint, token=DEFAULT_TOKEN)


@pytest.fixture
def model_folder(tmp_path) -> Path:
    folder = tmp_path / "model"
    (folder / "assets").mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- test\n---\n# Tiny model\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 8}, indent=2))
    (folder / "model.safetensors").write_bytes(_safetensors_bytes())
    (folder / "assets" / "preview.png").write_bytes(_png_bytes())
    return folder


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _commit_lines(request) -> list[dict]:
    return [json.loads(line) for line in request.body.decode().splitlines()]


def test_create_private_repo_reaches_server(hub_server, api):
    url = api.create_repo(REPO_ID, private=True)

    assert url == f"{hub_server.endpoint}/{REPO_ID}"
    assert url.repo_id == REPO_ID
    assert hub_server.repos[REPO_ID]["private"] is True
    (create_request,) = hub_server.find_requests("POST", "/api/repos/create")
    assert create_request.json()["visibility"] == "private"  # what 2.4.0 sends (no "private" key)
    assert create_request.headers["Authorization"] == f"Bearer {DEFAULT_TOKEN}"
    assert create_request.status == 200

    info = api.model_info(REPO_ID)
    assert info.private is True and info.id == REPO_ID and len(info.sha) == 40
    # The Hub answers 401 + X-Error-Code: RepoNotFound to anonymous reads of a private repo.
    with pytest.raises(RepositoryNotFoundError) as excinfo:
        api.model_info(REPO_ID, token=False)
    assert excinfo.value.response.status_code == 401

    # 409 on an existing repo; `exist_ok=True` swallows it.
    assert api.create_repo(REPO_ID, exist_ok=True) == url
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(REPO_ID)
    assert excinfo.value.response.status_code == 409
    # Public repo, name without namespace -> created under the token's user.
    api.create_repo("public-model", private=False)
    assert hub_server.repos["test-user/public-model"]["private"] is False


def test_upload_folder_regular_and_lfs_files(hub_server, api, model_folder):
    api.create_repo(REPO_ID, private=True)
    info = api.upload_folder(repo_id=REPO_ID, folder_path=model_folder, commit_message="Add tiny model")

    repo = hub_server.repos[REPO_ID]
    assert len(info.oid) == 40 and info.oid == repo["branches"]["main"]
    assert info.commit_url == f"{hub_server.endpoint}/{REPO_ID}/commit/{info.oid}"
    assert info.repo_url.repo_id == REPO_ID
    assert repo["commits"][-1]["title"] == "Add tiny model"
    for path, data in _local_files(model_folder).items():
        assert repo["files"][path] == data
    assert repo["lfs_files"] == {"model.safetensors", "assets/preview.png"}

    # Protocol actually used: LFS batch (basic), PUT without auth, verify with auth, one NDJSON commit.
    (batch,) = hub_server.find_requests("POST", "/info/lfs/objects/batch")
    assert batch.json()["transfers"] == ["basic", "multipart"]
    puts = hub_server.find_requests("PUT", "/_test_lfs_upload/")
    assert len(puts) == 2 and all("authorization" not in r.headers for r in puts)
    verifies = hub_server.find_requests("POST", "/info/lfs/objects/verify")
    assert len(verifies) == 2 and all(r.headers["Authorization"] == f"Bearer {DEFAULT_TOKEN}" for r in verifies)
    (commit,) = hub_server.find_requests("POST", f"/api/models/{REPO_ID}/commit/main")
    assert commit.headers["Content-Type"] == "application/x-ndjson"
    lines = _commit_lines(commit)
    assert lines[0] == {"key": "header", "value": {"summary": "Add tiny model", "description": ""}}
    by_path = {line["value"]["path"]: line for line in lines[1:]}
    assert by_path["model.safetensors"]["key"] == "lfsFile"
    assert (
        by_path["model.safetensors"]["value"]["oid"] == hashlib.sha256(repo["files"]["model.safetensors"]).hexdigest()
    )
    assert by_path["assets/preview.png"]["key"] == "lfsFile"
    assert by_path["config.json"]["key"] == "file"
    assert base64.b64decode(by_path["config.json"]["value"]["content"]) == repo["files"]["config.json"]
    assert all(r.headers.get("Authorization") == f"Bearer {DEFAULT_TOKEN}" for r in hub_server.find_requests("POST"))


def test_list_repo_files_and_model_info(hub_server, api, model_folder):
    api.create_repo(REPO_ID)
    api.upload_folder(repo_id=REPO_ID, folder_path=model_folder)

    assert set(api.list_repo_files(REPO_ID)) == EXPECTED_FILES
    info = api.model_info(REPO_ID)
    assert {s.rfilename for s in info.siblings} == EXPECTED_FILES
    assert info.sha == hub_server.head_sha(REPO_ID)
    detailed = {s.rfilename: s for s in api.model_info(REPO_ID, files_metadata=True).siblings}
    weights = hub_server.repos[REPO_ID]["files"]["model.safetensors"]
    assert detailed["model.safetensors"].size == len(weights)
    assert detailed["model.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert detailed["config.json"].lfs is None
    assert detailed["config.json"].blob_id == git_blob_sha1((model_folder / "config.json").read_bytes())
    top_level = {entry.path: type(entry).__name__ for entry in api.list_repo_tree(REPO_ID)}
    assert top_level["assets"] == "RepoFolder" and "assets/preview.png" not in top_level
    assert api.file_exists(REPO_ID, "model.safetensors") and not api.file_exists(REPO_ID, "missing.bin")
    assert [c.title for c in api.list_repo_commits(REPO_ID)] == [
        "Upload folder using huggingface_hub",
        "initial commit",
    ]


def test_snapshot_download_is_byte_identical_and_cached(hub_server, api, model_folder, tmp_path):
    api.create_repo(REPO_ID, private=True)
    api.upload_folder(repo_id=REPO_ID, folder_path=model_folder)
    cache = tmp_path / "snapshot-cache"

    snapshot = Path(api.snapshot_download(REPO_ID, cache_dir=cache))
    downloaded = _local_files(snapshot)
    assert set(downloaded) == EXPECTED_FILES
    for path, data in _local_files(model_folder).items():
        assert downloaded[path] == data
    head = hub_server.head_sha(REPO_ID)
    assert snapshot == cache / "models--test-user--tiny-mm-model" / "snapshots" / head
    assert (cache / "models--test-user--tiny-mm-model" / "refs" / "main").read_text() == head
    # Cache blobs are named like on the real Hub: sha256 for LFS files, git blob sha1 for regular files.
    blobs = {p.name for p in (cache / "models--test-user--tiny-mm-model" / "blobs").iterdir()}
    assert hashlib.sha256(downloaded["model.safetensors"]).hexdigest() in blobs
    assert git_blob_sha1(downloaded["config.json"]) in blobs

    # Second call: served from the cache, no file is fetched again.
    hub_server.clear_requests()
    assert Path(api.snapshot_download(REPO_ID, cache_dir=cache)) == snapshot
    assert hub_server.find_requests(path_contains="/resolve/") == []

    # Module-level helpers work too, thanks to use_hub_server (endpoint, HF_TOKEN, HF_HUB_CACHE).
    config_path = huggingface_hub.hf_hub_download(REPO_ID, "config.json")
    assert Path(config_path).read_bytes() == (model_folder / "config.json").read_bytes()
    assert str(tmp_path / "hf-cache") in config_path


def test_commit_500_is_not_retried_by_the_client(hub_server, api, model_folder):
    """Finding: huggingface_hub 2.4.0 does NOT retry the commit POST (HfHubHTTPError 500 right away); the
    caller has to retry. A manual retry is cheap: LFS objects uploaded by the failed attempt are not re-sent."""
    api.create_repo(REPO_ID)
    commits_before = len(hub_server.repos[REPO_ID]["commits"])
    hub_server.fail_next(1, status=500, path_contains="/commit/")

    with pytest.raises(HfHubHTTPError) as excinfo:
        api.upload_folder(repo_id=REPO_ID, folder_path=model_folder)
    assert excinfo.value.response.status_code == 500
    assert [r.status for r in hub_server.find_requests("POST", "/commit/")] == [500]
    assert len(hub_server.repos[REPO_ID]["commits"]) == commits_before
    assert hub_server.pending_failures == 0

    info = api.upload_folder(repo_id=REPO_ID, folder_path=model_folder)  # what our publishing code must do
    assert info.oid == hub_server.head_sha(REPO_ID)
    assert [r.status for r in hub_server.find_requests("POST", "/commit/")] == [500, 200]
    assert len(hub_server.find_requests("PUT", "/_test_lfs_upload/")) == 2  # from the first attempt only
    assert set(hub_server.repos[REPO_ID]["files"]) == EXPECTED_FILES


def test_preupload_500_is_retried_by_the_client(hub_server, api, model_folder):
    """Finding: unlike the commit, the preupload call goes through `http_backoff` and is retried (after ~1 s)."""
    api.create_repo(REPO_ID)
    hub_server.fail_next(1, status=503, path_contains="/preupload/")

    api.upload_folder(repo_id=REPO_ID, folder_path=model_folder)

    assert [r.status for r in hub_server.find_requests("POST", "/preupload/")] == [503, 200]
    assert set(hub_server.repos[REPO_ID]["files"]) == EXPECTED_FILES


def test_bad_token_gets_401(hub_server, model_folder):
    bad_api = HfApi(endpoint=hub_server.endpoint, token="hf_not_a_valid_token")

    with pytest.raises(HfHubHTTPError) as excinfo:
        bad_api.create_repo(REPO_ID)
    assert excinfo.value.response.status_code == 401
    assert "Invalid credentials in Authorization header" in str(excinfo.value)
    assert REPO_ID not in hub_server.repos

    hub_server.add_repo(REPO_ID)
    with pytest.raises(HfHubHTTPError) as excinfo:
        bad_api.upload_folder(repo_id=REPO_ID, folder_path=model_folder)
    assert excinfo.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as excinfo:
        bad_api.whoami()
    assert excinfo.value.response.status_code == 401
    assert set(hub_server.repos[REPO_ID]["files"]) == {".gitattributes"}
    # No token at all: writes are refused with 401 as well.
    with pytest.raises(HfHubHTTPError) as excinfo:
        HfApi(endpoint=hub_server.endpoint, token=False).create_repo("test-user/anonymous")
    assert excinfo.value.response.status_code == 401


def test_read_only_token_gets_403_on_writes(hub_server, model_folder):
    ro_api = HfApi(endpoint=hub_server.endpoint, token=READ_ONLY_TOKEN)

    with pytest.raises(HfHubHTTPError) as excinfo:
        ro_api.create_repo(REPO_ID)
    assert excinfo.value.response.status_code == 403

    hub_server.add_repo(REPO_ID, private=True, files={"config.json": b"{}"})
    with pytest.raises(HfHubHTTPError) as excinfo:
        ro_api.upload_folder(repo_id=REPO_ID, folder_path=model_folder)
    assert excinfo.value.response.status_code == 403
    assert set(hub_server.repos[REPO_ID]["files"]) == {".gitattributes", "config.json"}
    # ...but reads of a private repo are fine, and create_repo(exist_ok=True) falls back to repo_info.
    assert ro_api.model_info(REPO_ID).private is True
    assert ro_api.create_repo(REPO_ID, exist_ok=True).repo_id == REPO_ID
    assert ro_api.whoami()["auth"]["accessToken"]["role"] == "read"


def test_reupload_same_folder_is_a_noop(hub_server, api, model_folder):
    api.create_repo(REPO_ID)
    first = api.upload_folder(repo_id=REPO_ID, folder_path=model_folder)
    n_commits = len(hub_server.repos[REPO_ID]["commits"])

    hub_server.clear_requests()
    second = api.upload_folder(repo_id=REPO_ID, folder_path=model_folder)
    assert second.oid == first.oid
    assert len(hub_server.repos[REPO_ID]["commits"]) == n_commits
    assert hub_server.find_requests("POST", "/commit/") == []
    assert hub_server.find_requests("PUT") == []

    # Changing one file commits only that file.
    (model_folder / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 16}))
    third = api.upload_folder(repo_id=REPO_ID, folder_path=model_folder)
    assert third.oid != first.oid
    (commit,) = hub_server.find_requests("POST", "/commit/")
    assert [line["value"]["path"] for line in _commit_lines(commit)[1:]] == ["config.json"]
    assert hub_server.repos[REPO_ID]["files"]["config.json"] == (model_folder / "config.json").read_bytes()


def test_fail_next_matches_method_and_path(hub_server, api):
    hub_server.add_repo(REPO_ID, files={"config.json": b"{}"})
    hub_server.fail_next(2, status=502, path_contains=f"/api/models/{REPO_ID}", method="GET")

    for _ in range(2):  # model_info does a single plain GET: not retried
        with pytest.raises(HfHubHTTPError) as excinfo:
            api.model_info(REPO_ID)
        assert excinfo.value.response.status_code == 502
    assert api.model_info(REPO_ID).id == REPO_ID
    assert hub_server.pending_failures == 0


def test_create_pr_and_branches(hub_server, api, model_folder):
    api.create_repo(REPO_ID)
    info = api.upload_folder(repo_id=REPO_ID, folder_path=model_folder, create_pr=True)
    assert info.pr_num == 1 and info.pr_revision == "refs/pr/1"
    assert set(hub_server.repos[REPO_ID]["files"]) == {".gitattributes"}  # main untouched
    assert set(api.list_repo_files(REPO_ID, revision="refs/pr/1")) == EXPECTED_FILES

    api.create_branch(REPO_ID, branch="dev")
    api.upload_file(repo_id=REPO_ID, path_or_fileobj=b"hello", path_in_repo="notes.txt", revision="dev")
    assert "notes.txt" in api.list_repo_files(REPO_ID, revision="dev")
    assert "notes.txt" not in api.list_repo_files(REPO_ID)
    assert {b.name for b in api.list_repo_refs(REPO_ID).branches} == {"main", "dev"}
