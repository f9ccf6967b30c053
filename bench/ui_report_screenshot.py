"""The README's screenshot of a real run's report in the Prefect UI (`docs/ui-report.png`).

    python bench/real_model.py --split test --seeds 6 --workspace WS --out OUT.md   # a finished real run
    python bench/ui_report_screenshot.py --workspace WS --seed 6 --config WS/../real-model-seed6.yaml

Starts a Prefect server with its UI (a temporary home), runs `faithforge demo --real` against it on the workspace,
then opens the run's `faithforge-report` artifact in headless Chromium (the suite's CDP driver) and saves the page.
With the finished run's own `--config`, every training stage is reused and only the evaluation runs again (each run
writes its own: ~2 min for a real seed on 2 cores); with other settings the stages they change run again (a whole
seed, ~8 min), and the report holds that run's figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", type=Path, required=True, help="a finished `demo --real` workspace")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--config", type=Path, default=None, help="the run's `-c` file (bench/real_model.py writes one)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "ui-report.png")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    from tests.fixtures.cdp_browser import Browser, find_chromium
    from tests.fixtures.prefect_server import prefect_client, prefect_server

    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("no chromium on this machine (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="ff-ui-") as tmp, prefect_server(Path(tmp)) as server:
        env = {**os.environ, **server["env"]}
        command = [sys.executable, "-m", "faithforge.app.cli", "demo", "--real", "--seed", str(args.seed),
                   "-w", str(args.workspace), *(["-c", str(args.config)] if args.config else [])]
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
        print(done.stdout[-3000:])
        if done.returncode != 0:
            raise SystemExit(f"demo failed:\n{done.stderr[-3000:]}")
        with prefect_client(server["api"]) as client:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

            reports = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["faithforge-report"])))
        if not reports:
            raise SystemExit("the run wrote no faithforge-report artifact")
        with Browser(chromium, Path(tmp) / "chromium", width=1400, height=1000) as browser:
            browser.goto(f"{server['ui']}/artifacts/artifact/{reports[-1].id}")
            chart = "[...document.images].find(i => i.alt == 'Hallucination rate before and after DPO')"
            browser.wait_for(f"(() => {{ const i = {chart}; return i && i.complete ? i.naturalWidth : 0 }})()",
                             120, "the rates chart to load")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            browser.screenshot(args.out, full_page=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
