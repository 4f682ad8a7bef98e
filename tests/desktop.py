"""The desktop in the browser, driven as a user drives it: the noVNC page in Chromium, the XFCE menu
clicked with the mouse, commands typed into its terminal, its screen read back as pixels, and what
the browser receives counted on the wire (Chrome DevTools' WebSocket frames)."""

from __future__ import annotations

import io

import numpy as np

VIEWPORT = {"width": 1280, "height": 800}
# Where beamside's desktop menu (hub/desktop-session) puts its entries in that viewport: the panel's
# Applications button, then each entry's centre; a submenu opens to the right of its parent.
APPLICATIONS = (55, 48)
MENU = {
    "Xfce Terminal": (60, 79), "Science": (50, 105), "Graphics": (50, 130),
    ("Science", "pyFAI calibration"): (210, 105), ("Science", "silx view"): (196, 130),
}


class Desktop:
    """One user's desktop page (``/user/<name>/desktop/``) in a logged-in Chromium page."""

    def __init__(self, ctx, page, hub_url: str, user: str):
        self.page = page
        self.received = self.sent = 0  # bytes of WebSocket payload, since the page was opened
        cdp = ctx.new_cdp_session(page)
        cdp.on("Network.webSocketFrameReceived", lambda e: self._count(e, "received"))
        cdp.on("Network.webSocketFrameSent", lambda e: self._count(e, "sent"))
        cdp.send("Network.enable")
        page.goto(f"{hub_url}/user/{user}/desktop/")
        page.get_by_text("Connected").wait_for(timeout=120_000)
        page.wait_for_timeout(2000)  # the first full screen

    def _count(self, event: dict, way: str) -> None:
        frame = event["response"]
        data = frame["payloadData"]  # base64 for binary frames (opcode 2), which RFB's all are
        size = len(data) * 3 // 4 - data.count("=") if frame["opcode"] == 2 else len(data.encode())
        setattr(self, way, getattr(self, way) + size)

    def rate(self, seconds: float) -> float:
        """Bytes per second the browser receives, over the next ``seconds``."""
        before = self.received
        self.page.wait_for_timeout(seconds * 1000)  # Playwright delivers the DevTools events meanwhile
        return (self.received - before) / seconds

    def pixels(self, path=None) -> np.ndarray:
        """The page as an RGB array (and saved to ``path``)."""
        from PIL import Image

        png = self.page.screenshot(path=str(path) if path else None)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def menu(self, *entries: str) -> None:
        """Open the Applications menu and click through ``entries`` (the last one starts its program)."""
        self.page.mouse.click(*APPLICATIONS)
        self.page.wait_for_timeout(1000)
        for depth in range(1, len(entries) + 1):
            key = entries[0] if depth == 1 else entries[:depth]
            x, y = MENU[key]
            if depth < len(entries):  # a submenu opens on hover; move along its row into it
                self.page.mouse.move(x, y, steps=5)
                self.page.wait_for_timeout(1000)
                self.page.mouse.move(MENU[entries[:depth + 1]][0], y, steps=5)
            else:
                self.page.mouse.move(x, y, steps=5)
                self.page.mouse.click(x, y)
        self.page.wait_for_timeout(500)

    def type(self, line: str) -> None:
        """Type a line (and Enter) into the window that has the focus."""
        self.page.keyboard.type(line, delay=20)
        self.page.keyboard.press("Enter")


def viridis_pixels(rgb: np.ndarray, tolerance: int = 10) -> tuple[int, int]:
    """How many pixels have a colour of matplotlib's viridis map (silx's image colormap here), and how
    many of its 256 levels appear: an image drawn by silx has thousands, of many levels; a blank
    desktop, a window frame or text none."""
    from matplotlib import colormaps

    lut = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.int16)
    colours, counts = np.unique(rgb[..., :3].reshape(-1, 3), axis=0, return_counts=True)
    distance = np.abs(colours[:, None, :].astype(np.int16) - lut[None]).max(-1)  # (colours, 256)
    near = distance.min(1) <= tolerance
    return int(counts[near].sum()), len(np.unique(distance[near].argmin(1)))
