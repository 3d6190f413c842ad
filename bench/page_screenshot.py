"""The screenshot of `avhgr serve`'s page in docs/serve.png: the server on a free local port, the
page in Debian's chromium with nothing reachable but the server, a generated clip dropped on it.

    .venv/bin/python bench/page_screenshot.py [--out docs/serve.png]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import free_port, generated_clip  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    args = ap.parse_args()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    clip = generated_clip(Path(tempfile.mkdtemp(prefix="avhgr-page-")))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "avhgr", "serve", "--port", str(port), "--device", "cpu"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=5).read()
                break
            except OSError:
                time.sleep(0.25)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort())
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model').textContent.startsWith('Model:')", timeout=60_000)
            page.set_input_files("#file", str(clip))
            page.wait_for_selector("#result:not([hidden])", timeout=300_000)
            page.wait_for_function("document.getElementById('timeline').naturalWidth > 0", timeout=60_000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
