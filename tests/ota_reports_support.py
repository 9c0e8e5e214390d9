"""Tools of the ota-reports tests: Debian's poppler (PDF text, rendering) and chromium with
its driver (the dashboard in a real browser), installed by devstack's apt step when missing."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devstack import install


def ensure(*packages: install.Apt) -> None:
    missing = [p for p in packages if not p.installed()]
    if missing:
        install.install_apt(missing)


def pdf_text(pdf: bytes, tmp: Path) -> str:
    ensure(install.POPPLER)
    path = tmp / "report.pdf"
    path.write_bytes(pdf)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True,
                          capture_output=True, text=True).stdout  # fmt: skip


def pdf_png(pdf: bytes, tmp: Path) -> bytes:
    """The PDF's first page as a PNG (pdftoppm fails on a PDF it cannot open)."""
    ensure(install.POPPLER)
    path = tmp / "render.pdf"
    path.write_bytes(pdf)
    subprocess.run(["pdftoppm", "-png", "-r", "50", "-singlefile", str(path), str(tmp / "page")],
                   check=True, capture_output=True)  # fmt: skip
    return (tmp / "page.png").read_bytes()


@contextmanager
def chromium(width: int = 1100, height: int = 900) -> Iterator[Any]:
    """A headless Debian chromium driven by Selenium through Debian's chromedriver (no
    download: Selenium Manager is not asked for a driver), with JavaScript switched off: the
    dashboard must read and act without it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    ensure(install.CHROMIUM, install.CHROMEDRIVER)
    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium"))
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"profile.managed_default_content_settings.javascript": 2}
    )
    driver = webdriver.Chrome(options=options, service=Service(str(shutil.which("chromedriver"))))
    try:
        yield driver
    finally:
        driver.quit()
