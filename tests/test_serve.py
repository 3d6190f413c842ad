"""`avhgr serve`: the HTTP API on real and hostile uploads, a full queue, and the page in a real
browser (Debian's chromium driven by Playwright) with no network but this server's."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from avhgr.synth import write_media

from conftest import face_frames
from test_predict import voice

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(fields: dict, file_name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")  # fmt: skip
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(url: str, file_name: str, data: bytes, timeout: float = 300, **fields):
    body, ctype = multipart(fields, file_name, data)
    req = urllib.request.Request(url + "/api/predict", data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), r.headers  # an HTTPMessage: names in any case
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), e.headers


def get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server on a free port with the built-in model, a 2 MB upload limit and a queue of 2, its
    temporary folder a folder of ours (so that what it leaves there can be seen)."""
    tmp = tmp_path_factory.mktemp("serve_tmp")
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "avhgr", "serve", "--port", str(port), "--max-upload-mb", "2", "--queue", "2",
                             "--device", "cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            get(url + "/healthz")
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"the server ended: {proc.stdout.read()}")
            time.sleep(0.5)
    yield url, tmp, proc
    proc.terminate()
    assert proc.wait(timeout=30) == 0  # SIGTERM ends it cleanly


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    av = write_media(root / "talk.mp4", face_frames(40), 10, voice(4.0))
    audio = write_media(root / "voice.wav", audio=voice(3.0))
    return av, audio


def test_a_real_clip_and_an_audio_file_get_what_predict_json_prints(server, clips):
    url, tmp, _ = server
    av, audio = clips
    status, r, _ = post(url, "talk.mp4", av.read_bytes(), hop="0.5")
    assert status == 200, r
    assert r["emotion"] in r["probabilities"] and sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    assert r["face_rate"] > 0.5 and r["speech_rate"] > 0.5 and r["file"] == "talk.mp4" and r["experts"]["face"] > 0
    assert len(r["timeline"]) >= 7 and all(w["end"] - w["start"] == pytest.approx(0.5) for w in r["timeline"])
    status, r, _ = post(url, "voice.wav", audio.read_bytes())
    assert status == 200 and r["face_rate"] is None and r["speech_rate"] > 0.5 and r["emotion"] is not None and "timeline" not in r
    assert not list(tmp.glob("avhgr-serve-*"))  # every request's files are gone
    info = get(url + "/api/model")
    assert info["name"] == "builtin" and info["inputs"] == ["audio", "visual"] and "face" in info["experts"] and info["card"]
    assert get(url + "/healthz")["status"] == "ok"


def test_hostile_uploads_get_4xx_in_words_and_the_server_goes_on(server, clips):
    url, tmp, _ = server
    av, _ = clips
    status, r, _ = post(url, "empty.mp4", b"")
    assert status == 400 and "empty.mp4" in r["error"] and "empty" in r["error"]
    status, r, _ = post(url, "notes.mp4", b"this is text, not a video\n" * 40)
    assert status == 415 and "notes.mp4" in r["error"] and str(tmp) not in r["error"] and "/tmp" not in r["error"]
    status, r, _ = post(url, "cut.mp4", av.read_bytes()[: len(av.read_bytes()) // 3])
    assert status in (200, 415) and ("error" in r or "emotion" in r)  # a truncated file: what can be read, or a clear no
    status, r, _ = post(url, "big.mp4", os.urandom(3 * 2**20))
    assert status == 413 and "limit" in r["error"]
    status, r, _ = post(url, "../../etc/passwd", b"x" * 100)  # a name is only a name
    assert status == 415 and "passwd" in r["error"] and "/etc" not in r["error"]
    status, r, _ = post(url, "talk.mp4", av.read_bytes(), hop="0.001")
    assert status == 422 and "hop" in r["error"]
    assert get(url + "/healthz")["status"] == "ok" and not list(tmp.glob("avhgr-serve-*"))


def test_eight_requests_at_once_are_answered_or_told_to_retry(server, clips):
    url, _, proc = server
    av, _ = clips
    data, results = av.read_bytes(), []
    threads = [threading.Thread(target=lambda: results.append(post(url, "talk.mp4", data))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8  # none lost
    codes = sorted(s for s, _, _ in results)
    assert set(codes) <= {200, 503} and codes.count(200) >= 3, codes  # one computing, two waiting at least
    for status, r, headers in results:
        if status == 503:
            assert int(headers["Retry-After"]) >= 1 and "busy" in r["error"]
    assert proc.poll() is None and get(url + "/healthz")["admitted"] == 0


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (make test installs Debian's chromium)")
def test_the_page_in_a_real_browser_shows_the_emotion_and_its_timeline_offline(server, clips, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _, _ = server
    av, _ = clips
    elsewhere = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                                                     "--disable-component-update", "--disable-sync", "--no-first-run"])  # fmt: skip
        page = browser.new_page()

        def only_this_server(route):  # the network unplugged: anything not from this server fails
            if route.request.url.startswith(url):
                route.continue_()
            else:
                elsewhere.append(route.request.url)
                route.abort()

        page.route("**/*", only_this_server)
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model').textContent.startsWith('Model:')", timeout=30_000)
        page.set_input_files("#file", str(av))
        page.wait_for_selector("#result:not([hidden])", timeout=240_000)
        emotion = page.text_content("#emotion")
        page.wait_for_function("document.getElementById('timeline').naturalWidth > 0", timeout=30_000)
        bars = page.locator("#bars .bar").count()
        rows = page.locator("#windows tbody tr").count()
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert emotion and emotion != "no emotion" and bars == 6 and rows >= 7
    assert (tmp_path / "page.png").stat().st_size > 10_000
    assert elsewhere == []  # nothing from a CDN, no fonts, no analytics


def test_a_bug_while_answering_is_json_in_words_and_the_server_goes_on(capfd):
    """Only a UserError was caught: any other exception became a plain-text 500 from the framework."""
    import uvicorn

    from avhgr.serve import create_app

    class Broken:  # a model whose preprocessing has a bug
        name = "broken"

        def windows_of_file(self, path, hop):
            raise ZeroDivisionError("a bug")

    class Model:
        name, _predictor = "broken", Broken()

        def info(self):
            return {"name": "broken"}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Model()), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                get(url + "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        status, body, _ = post(url, "clip.mp4", b"\x00" * 100)
        assert status == 500 and "clip.mp4: an internal error in avhgr (ZeroDivisionError)" in body["error"]
        assert get(url + "/healthz")["status"] == "ok"  # still serving
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert "ZeroDivisionError: a bug" in capfd.readouterr().err  # the traceback, in the server's log
