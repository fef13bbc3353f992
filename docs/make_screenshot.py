"""Screenshot of a whybox HTML report in headless Chromium (for docs/img/report.png).

    whybox explain --report whybox-out/report.html --validate 8
    python docs/make_screenshot.py whybox-out/report.html docs/img/report.png

Needs ``apt-get install -y chromium`` and ``pip install playwright``; fails if the page logs errors.
"""

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

parser = argparse.ArgumentParser()
parser.add_argument("html")
parser.add_argument("png")
parser.add_argument("--width", type=int, default=1200)
parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
args = parser.parse_args()

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": args.width, "height": 900})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(Path(args.html).resolve().as_uri())
    page.screenshot(path=args.png, full_page=True)
    browser.close()
if errors:
    raise SystemExit(f"page logged errors: {errors}")
print("wrote", args.png)
