"""Regenerate docs/report.png: a report of five methods on `synthetic`, rendered by headless Chromium.

    python benchmarks/render_report_png.py [--out /tmp/report-example] [--jobs 2]

Trains (or reads back) joint, ogm-ge, opm, aug and unimodal on seeds 0-4 of the default protocol,
writes the HTML report and screenshots its first 1400 x 2400 pixels. Prints the wall time.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path


def mmbench(*args: str) -> None:
    subprocess.run([sys.executable, "-c", "from mmbench.cli import main; main()", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/report-example"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--png", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "report.png")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("no chromium on this machine (Debian: apt-get install chromium)")
    started = time.perf_counter()
    results, report = args.out / "results", args.out / "report"
    mmbench("run", "-m", "joint,ogm-ge,opm,aug,unimodal", "--seeds", "0-4", "--jobs", str(args.jobs),
            "--out", str(results))
    mmbench("report", str(results), "--format", "html", "--out", str(report))
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={args.png}", "--window-size=1400,2400", (report / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    print(f"wrote {args.png} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
