"""`data download` against a local HTTP server on 127.0.0.1 (never the real internet)."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from data_prep.download import download, release_files
from data_prep.synth import generate_cohort, write_psv_files
from sepsis_rl.cli import app


class _QuietHandler(SimpleHTTPRequestHandler):
    requests_seen: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        _QuietHandler.requests_seen.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serve a small fixture laid out like the release's training/ folder."""
    root = tmp_path / "served"
    table = generate_cohort(6, seed=2)
    write_psv_files(table, root)
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _QuietHandler.requests_seen = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def test_release_file_list_matches_the_reference():
    assert len(release_files(("A",))) == 20_336
    assert len(release_files(("B",))) == 20_000
    assert release_files(("A",), limit=2) == [
        "training_setA/p000001.psv",
        "training_setA/p000002.psv",
    ]


def test_download_fetches_skips_existing_and_resumes(server, tmp_path):
    url, root = server
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.psv"))
    out = tmp_path / "cache"
    first = download(out, url, files, workers=2)
    assert len(first.fetched) == len(files) and not first.failed
    for rel in files:
        assert (out / rel).read_bytes() == (root / rel).read_bytes()

    (out / files[0]).unlink()  # an interrupted earlier run
    _QuietHandler.requests_seen = []
    second = download(out, url, files, workers=2)
    assert second.skipped_existing == len(files) - 1
    assert [p.name for p in second.fetched] == [files[0].split("/")[-1]]
    assert len(_QuietHandler.requests_seen) == 1
    assert not list(out.rglob("*.part"))


def test_missing_files_are_reported_and_exit_nonzero(server, tmp_path):
    url, root = server
    served_a = sorted((root / "training_setA").glob("*.psv"))
    for extra in served_a[2:]:
        extra.unlink()  # the server now has p000001 and p000002 only
    out = tmp_path / "c"
    args = ["data", "download", "--out", str(out), "--base-url", url, "--sets", "A"]
    result = CliRunner().invoke(app, [*args, "--limit", "3"])
    assert result.exit_code == 1
    assert "p000003.psv" in result.output and "404" in result.output
    assert "rerun the same command to resume" in result.output
    assert sorted(p.name for p in out.rglob("*.psv")) == ["p000001.psv", "p000002.psv"]
    assert not list(out.rglob("*.part"))
