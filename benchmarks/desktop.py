"""``python -m benchmarks.desktop``: what the desktop in the browser sends a scientist, per second.

Starts ``beamside up`` with demo beamtimes, logs alice in with Chromium, opens her desktop and counts
the WebSocket payload the browser receives (Chrome DevTools' frames: what crosses the network, since
the RFB stream is the whole desktop) while the screen is:

1. **idle** (the panel's clock only), after the first screen;
2. **busy**: a live view of her demo scan in the desktop (silx's Plot2D, 900×700, a new 1028×1062
   detector frame every ``1/--fps`` s, as a beamline's live display does); rounds of ``--seconds`` s;
3. **busy on a slow link's setting**: the same, after ``FrameRate=N`` in her ``~/.vnc/config``
   (TigerVNC's own per-user file, read when the desktop starts) and the desktop restarted.

The baseline is the detector data itself: the live view's frames, sent raw (uint32), per second.
The client is jupyter-remote-desktop-proxy's noVNC (its Tight encoding with JPEG quality 6,
compression 2; its viewer offers no other). Not a test: it never fails on a figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from tests.browser import logged_in
from tests.deploy import Deployment
from tests.desktop import VIEWPORT, Desktop
from tests.hubclient import Kernel

LIVE_VIEW = r"""
import sys, h5py
from silx.gui import qt
from silx.gui.plot import Plot2D
app = qt.QApplication([])
frames = h5py.File(sys.argv[1])["/entry/data/data"]
plot = Plot2D()
plot.setWindowTitle("live view")
plot.resize(900, 700)
plot.show()
shown = [0]
def next_frame():
    plot.addImage(frames[shown[0] % len(frames)], legend="frame", resetzoom=False)
    shown[0] += 1
timer = qt.QTimer()
timer.timeout.connect(next_frame)
timer.start(int(1000 / float(sys.argv[2])))
app.exec()
"""


def _in_kernel(kernel: Kernel, code: str) -> dict:
    answer = kernel.run(code, timeout=120)
    if answer.get("error"):
        raise RuntimeError(f"in alice's kernel: {answer['error']}")
    return answer


def start_live_view(kernel: Kernel, scan: str, fps: float) -> None:
    _in_kernel(kernel, f"""
import os, subprocess, sys
live = subprocess.Popen([sys.executable, "-c", {LIVE_VIEW!r}, {scan!r}, "{fps}"],
                        env=dict(os.environ, DISPLAY=":1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
""")


def stop_live_view(kernel: Kernel) -> None:
    _in_kernel(kernel, "live.terminate(); live.wait(30)")


def busy_rates(desktop: Desktop, rounds: int, seconds: float) -> list[float]:
    desktop.page.wait_for_timeout(5000)  # the window drawn, the stream steady
    return [desktop.rate(seconds) for _ in range(rounds)]


def run(args, folder: Path, say) -> dict:
    dep = Deployment(folder, {"culler": {"enabled": False}, "data": {"demo_size": "100MB"}})
    result = {"args": vars(args)}
    try:
        say("starting beamside up …")
        dep.start()
        dep.hub.spawn("alice")
        kernel = Kernel(dep.url, "alice", dep.hub.token("alice"))
        scan = _in_kernel(kernel, "import analysis_lib as al\n"
                                  "print(sorted((al.beamtimes()[0].path / 'raw').glob('*.nxs'))[0])")["stdout"].strip()
        frame_bytes = 1028 * 1062 * 4
        result["baseline: the frames themselves (bytes/s)"] = frame_bytes * args.fps
        home = dep.folder / "state" / "homes" / "alice"
        with logged_in(dep.url, "alice", dep.logins["alice"], VIEWPORT) as (ctx, page):
            desktop = Desktop(ctx, page, dep.url, "alice")
            result["first screen (bytes)"] = desktop.received
            say("idle …")
            result["idle (bytes/s)"] = [desktop.rate(args.seconds) for _ in range(args.rounds)]
            say(f"busy: a live view at {args.fps:g} frames/s …")
            start_live_view(kernel, scan, args.fps)
            result["busy (bytes/s)"] = busy_rates(desktop, args.rounds, args.seconds)
            stop_live_view(kernel)
            say(f"busy with FrameRate={args.slow_frame_rate} in ~/.vnc/config …")
            _in_kernel(kernel, f"""
import pathlib, subprocess
(pathlib.Path.home() / ".vnc").mkdir(exist_ok=True)
(pathlib.Path.home() / ".vnc" / "config").write_text("FrameRate={args.slow_frame_rate}\\n")
subprocess.run(["vncserver", "-kill", ":1"], check=True, capture_output=True)
""")
        with logged_in(dep.url, "alice", dep.logins["alice"], VIEWPORT) as (ctx, page):
            desktop = Desktop(ctx, page, dep.url, "alice")  # a new desktop, with her setting
            start_live_view(kernel, scan, args.fps)
            result["busy, slow-link setting (bytes/s)"] = busy_rates(desktop, args.rounds, args.seconds)
            stop_live_view(kernel)
        (home / ".vnc" / "config").unlink(missing_ok=True)
        kernel.close()
    finally:
        say("stopping beamside up …")
        dep.stop()
    return result


def report(result: dict, args) -> str:
    def med(key):
        return statistics.median(result[key])

    base = result["baseline: the frames themselves (bytes/s)"]
    rows = [
        ("first screen", f"{result['first screen (bytes)'] / 1e3:,.1f} kB", ""),
        ("idle", f"{med('idle (bytes/s)') / 1e3:,.2f} kB/s", ""),
        (f"busy: live view, {args.fps:g} frames/s", f"{med('busy (bytes/s)') / 1e3:,.0f} kB/s",
         f"{base / med('busy (bytes/s)'):,.0f}× less than the frames"),
        (f"busy, FrameRate={args.slow_frame_rate}", f"{med('busy, slow-link setting (bytes/s)') / 1e3:,.0f} kB/s",
         f"{med('busy (bytes/s)') / med('busy, slow-link setting (bytes/s)'):.1f}× less than default"),
        ("baseline: the frames, raw", f"{base / 1e6:,.1f} MB/s", ""),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"desktop in the browser: medians of {args.rounds} rounds of {args.seconds:g} s (received by Chromium)"]
    lines += [f"  {name:<{width}}  {value:>12}  {note}" for name, value, note in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.desktop", description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=float, default=10, help="the live view's frames per second (10)")
    parser.add_argument("--slow-frame-rate", type=int, default=2, help="FrameRate for the slow-link round (2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="beamside-bench-desktop-") as folder:
        result = run(args, Path(folder), lambda m: print(f"[desktop] {m}", file=sys.stderr, flush=True))
    print(report(result, args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
