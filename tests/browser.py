"""A headless Chromium for the HTML page: the browser tests and `python -m tests.screenshots`.

Debian's `chromium` (apt-get install chromium) driven by Playwright's Python package
(the `test` extra); Playwright's own browser download is never used. Pages are served
to the browser from memory, exactly as the daemon answers them (`publish.Output`,
`output_response`: the same bytes and headers, Content-Security-Policy included), under
SITE; every other http(s) request (the stories' images, the outlets' icons, on hosts
that do not exist) is answered with a generated SVG, so nothing leaves the machine and
the screenshots are the same on every run.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aggregator.publish import Output, output_response

#: where the published files are served from, for the browser
SITE = "http://aggregator.test/"
#: (name, viewport width, height, color scheme) of each screenshot
SHOTS = (
    ("desktop-light", 1280, 800, "light"),
    ("phone-light", 360, 740, "light"),
    ("desktop-dark", 1280, 800, "dark"),
    ("phone-dark", 360, 740, "dark"),
)
#: what to install when there is no browser
INSTALL_HINT = (
    "apt-get install chromium, and pip install -e '.[test]' (Playwright's Python package;"
    " no `playwright install` needed)"
)


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if shutil.which("chromium") is None:
        return f"chromium not installed: {INSTALL_HINT}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"playwright not installed: {INSTALL_HINT}"
    return None


def launch(playwright: Any) -> Any:
    """Debian's Chromium, headless."""
    return playwright.chromium.launch(executable_path=shutil.which("chromium"))


def fake_image(url: str) -> bytes:
    """A small SVG standing for the image at `url`: colours and shapes from its hash."""
    digest = hashlib.sha256(url.encode()).digest()
    hue, hue2 = digest[0] * 360 // 256, digest[1] * 360 // 256
    x, y, r = 20 + digest[2] % 80, 15 + digest[3] % 50, 12 + digest[4] % 25
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="120" height="80" viewBox="0 0 120 80">'
        f'<defs><linearGradient id="g" x2="1" y2="1"><stop stop-color="hsl({hue},45%,55%)"/>'
        f'<stop offset="1" stop-color="hsl({hue2},50%,30%)"/></linearGradient></defs>'
        '<rect width="120" height="80" fill="url(#g)"/>'
        f'<circle cx="{x}" cy="{y}" r="{r}" fill="hsla({hue2},70%,85%,.55)"/>'
        f'<path d="M0 80 L{x} {40 + r} L{x + 40} 80 Z" fill="hsla({hue},30%,15%,.45)"/></svg>'
    ).encode()


def serve(page: Any, files: Mapping[str, bytes]) -> list[str]:
    """Answer the page's requests: `files` under SITE as the daemon serves them, anything
    else over http(s) with a fake image. Returns the list the image URLs asked for go to."""
    outputs = {name: Output.of(name, body, 0.0) for name, body in files.items()}
    images: list[str] = []

    def answer(route: Any) -> None:
        request = route.request
        url = request.url
        if url.startswith(SITE):
            found = outputs.get(url.removeprefix(SITE).split("?")[0] or "index.html")
            if found is None:
                route.fulfill(status=404, body="not found\n", content_type="text/plain")
                return
            status, headers, body = output_response(found, "GET", None, None, None)
            route.fulfill(
                status=status,
                headers={k.decode(): v.decode() for k, v in headers},
                body=body,
            )
            return
        images.append(url)
        route.fulfill(status=200, body=fake_image(url), content_type="image/svg+xml")

    page.route("**/*", answer)
    return images


def take_screenshots(browser: Any, files: Mapping[str, bytes], name: str, out: Path) -> list[Path]:
    """The page `name` of `files` at each of SHOTS, as `out/<shot>.png` (the viewport, at a
    device scale factor of 1: a few dozen KB each); the lazy images scrolled into view and
    loaded first."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for shot, width, height, scheme in SHOTS:
        context = browser.new_context(
            viewport={"width": width, "height": height},
            device_scale_factor=1,
            color_scheme=scheme,
        )
        try:
            page = context.new_page()
            serve(page, files)
            page.goto(SITE + name, wait_until="load")
            settle_images(page)
            path = out / f"{shot}.png"
            page.screenshot(path=str(path))
            written.append(path)
        finally:
            context.close()
    return written


def settle_images(page: Any) -> None:
    """Wait until every image in the viewport has loaded (lazy ones start when near it)."""
    wait_until_true(
        page,
        """[...document.images]
            .filter(i => i.getBoundingClientRect().top < innerHeight)
            .every(i => i.complete)""",
    )


def wait_until_true(page: Any, expression: str, timeout: float = 30.0) -> None:
    """Poll `expression` until it is true. Not `page.wait_for_function`: when its first
    check is false it polls with an eval inside the page, which our pages'
    Content-Security-Policy (rightly) forbids; `page.evaluate` goes through the DevTools
    protocol, which the policy does not govern."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout:.0f} s: {expression}")
        time.sleep(0.05)
