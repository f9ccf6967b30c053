"""Labeling in the Prefect UI: the pipeline's `label` step pauses the run with a form; headless Chromium fills it in
the real UI, the run resumes and its report shows the judge's accuracy on those labels. A form nobody answers
times out into "unlabeled" and the run completes."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from faithforge.stages.label import SECTION
from faithforge.stages.outputs import EvaluationOutput

REPO = Path(__file__).resolve().parents[2]
SOURCE = "Ivo delivered the books to Goran on Monday. Vera sold the hats at the market."


def _evaluation(folder: Path) -> EvaluationOutput:
    """An evaluation folder as the evaluate stage leaves it: outputs.jsonl and report.md."""
    folder.mkdir(parents=True)
    rows = [{"id": f"before:{i}", "item": str(i), "model": "before", "source": SOURCE, "summary": s,
             "judge": "grounding", "judge_hallucinated": "Paris" in s,
             "spans": [[s.index("Paris"), s.index("Paris") + 5]] if "Paris" in s else []}
            for i, s in enumerate(["Ivo delivered the books in Paris.", "Vera sold the hats."])]
    (folder / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "report.md").write_text("# Hallucination evaluation\n")
    return EvaluationOutput(path=str(folder), markdown_path=str(folder / "report.md"), chart="", judge_accuracy="",
                            judge="grounding", split="test", items=2, seconds=0.0, items_per_second=0.0, models={},
                            difference={})


@pytest.mark.timeout(300)
def test_a_form_nobody_answers_times_out_into_unlabeled_and_the_run_completes(prefect_harness, tmp_path):
    from prefect import flow

    from faithforge.core.config import load_config
    from faithforge.flows.pipeline import label_step

    evaluation = _evaluation(tmp_path / "eval")
    cfg = load_config(None, overrides={"workspace": str(tmp_path / "ws"),
                                       "label": {"enabled": True, "timeout_s": 3, "poll_s": 1}}, environ={})

    @flow(name="label-timeout-check")
    def run():
        return label_step(cfg, None, evaluation)

    started = time.monotonic()
    state = run(return_state=True)
    assert state.is_completed(), state
    out = state.result()
    assert out.status == "unlabeled" and out.asked == 2 and out.labeled == 0
    assert time.monotonic() - started < 120  # it never hangs: 3 s of waiting plus Prefect's own overhead
    report = Path(evaluation.markdown_path).read_text()
    assert SECTION in report and "Unlabeled: the run asked about 2 outputs" in report
    assert not (tmp_path / "eval" / "labels.jsonl").exists()


def test_the_form_has_a_choice_per_output_and_shows_source_output_and_flags(tmp_path):
    from faithforge.stages.label import form_description
    from faithforge.evaluation.labeling import read_label_items
    from faithforge.flows.pipeline import label_form

    items = read_label_items(_evaluation(tmp_path / "eval").path)
    schema = label_form(items).model_json_schema()
    assert set(schema["properties"]) == {"output_1", "output_2", "note"}
    choice = schema["properties"]["output_1"]
    assert choice["enum"] == ["supported", "unsupported", "skip"] and choice["default"] == "skip"
    assert "Paris" in choice["description"] and "flagged: “Paris”" in choice["description"]
    text = form_description(items, 1, 1)
    assert "> Source: Ivo delivered the books to Goran on Monday." in text and "Output: Vera sold the hats." in text
    assert "before" not in text  # which model wrote an output is not shown


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_chromium_fills_the_pause_form_and_the_report_shows_the_judges_accuracy(tmp_path):
    from tests.fixtures.cdp_browser import Browser, find_chromium
    from tests.fixtures.prefect_server import prefect_server
    from tests.fixtures.small_config import SMALL_PIPELINE

    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed (.ci/run installs it)")
    with prefect_server(tmp_path, PYTHONPATH=str(REPO)) as server:
        api, ui, procs = server["api"], server["ui"], server["procs"]
        config = json.loads(json.dumps(SMALL_PIPELINE))
        config["train"]["steps"] = 2
        config.update(workspace=str(tmp_path / "ws"),
                      label={"enabled": True, "items": 3, "batch_size": 3, "timeout_s": 900, "poll_s": 1})
        script = ("import json, sys\nfrom faithforge.core.config import load_config\nfrom faithforge.flows.pipeline import pipeline\n"
                  "summary = pipeline(load_config(None, overrides=json.loads(sys.argv[1]), environ={}))\n"
                  "print('LABEL', json.dumps(summary['stages']['label']))\n")
        flow_proc = procs.start("flow", [sys.executable, "-c", script, json.dumps(config)], server["env"], REPO)
        deadline = time.monotonic() + 900
        while True:  # the pipeline runs every stage, then pauses at the label step
            paused = httpx.post(f"{api}/flow_runs/filter",
                                json={"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}).json()
            if paused:
                break
            assert flow_proc.poll() is None and time.monotonic() < deadline, procs.tail("flow")
            time.sleep(2)
        run_id = paused[0]["id"]
        with Browser(chromium, tmp_path / "chromium-profile") as browser:
            _fill_the_form(browser, f"{ui}/runs/flow-run/{run_id}", tmp_path)
            flow_proc.wait(timeout=600)
            out = procs.tail("flow", 10**6)
            assert flow_proc.returncode == 0, out[-4000:]
            label = json.loads(out.split("LABEL ", 1)[1].splitlines()[0])
            assert label["status"] == "labeled" and label["labeled"] == 2 and label["skipped"] == 1
            rows = [json.loads(line) for line in Path(label["labels_path"]).read_text().splitlines()]
            assert sorted(r["label"] for r in rows) == ["faithful", "hallucinated"]
            # the run's report artifact, in the UI: the judge's accuracy on those two labels
            browser.goto(f"{ui}/runs/flow-run/{run_id}")
            browser.wait_for("!!document.body", 60, "the page")
            # the run page's tabs are not addressable by URL: click the one whose own text is "Artifacts"
            tab = ("[...document.querySelectorAll('body *')].find(e => e.children.length == 0 && e.innerText && "
                   "e.innerText.trim() == 'Artifacts')")
            browser.wait_for(f"!!{tab}", 120, "the flow run page's Artifacts tab")
            browser.evaluate(f"{tab}.click()")
            browser.wait_for("document.body.innerText.includes('faithforge-report')", 60, "the Artifacts tab")
            reports = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["faithforge-report"]}}})
            report_id = reports.json()[0]["id"]
            browser.goto(f"{ui}/artifacts/artifact/{report_id}")
            text = browser.wait_for("document.body && document.body.innerText.includes('Judge accuracy on your "
                                    "labels') && document.body.innerText", 120, "the report with the label section")
            accuracy = label["agreement"]["accuracy"]
            assert f"{100 * accuracy:.1f}%" in text and "2 outputs labeled by you (1 skipped)" in text
            browser.screenshot(tmp_path / "report.png")


def _fill_the_form(browser, url: str, tmp_path: Path) -> None:
    """Open the paused run, press Resume, choose unsupported / supported / skip, submit."""
    browser.goto(url)
    browser.wait_for("!!document.body", 60, "the page")
    resume = "[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Resume')"
    browser.wait_for(f"!!{resume}", 120, "the paused run's Resume button")
    browser.evaluate(f"{resume}.click()")
    browser.wait_for("document.body.innerText.includes('Output 1') && document.body.innerText.includes('Source:')",
                     60, "the label form with its description")
    browser.screenshot(tmp_path / "form.png")
    for number, choice in ((1, "unsupported"), (2, "supported"), (3, "skip")):
        _choose(browser, f"Output {number}", choice)
    submit = ("[...document.querySelectorAll('[role=dialog] button, .p-modal button')]"
              ".find(b => ['Submit', 'Resume'].includes(b.innerText.trim()))")
    browser.wait_for(f"!!{submit}", 30, "the form's submit button")
    browser.evaluate(f"{submit}.click()")


def _choose(browser, title: str, choice: str) -> None:
    """Pick `choice` in the form field titled `title` (the UI renders a Literal as a native select) as a user does:
    set the value and fire the events the UI listens to; then read it back from the DOM."""
    field = (f"[...document.querySelectorAll('.schema-form-property')].find(p => {{ const l = "
             f"p.querySelector('.schema-form-property__label'); return l && (l.innerText.trim() === {title!r} || "
             f"l.innerText.trim().startsWith({title + ' '!r})) }})")
    select = f"{field}.querySelector('select.p-native-select__control:not(.p-native-select__control--placeholder)')"
    browser.wait_for(f"!!({field}) && !!({select})", 30, f"the select of {title}")
    browser.evaluate(f"(() => {{ const s = {select}; s.value = {choice!r}; "
                     "s.dispatchEvent(new Event('input', {bubbles: true})); "
                     "s.dispatchEvent(new Event('change', {bubbles: true})); })()")
    browser.wait_for(f"({select}).value === {choice!r}", 10, f"{title} set to {choice}")


def test_demo_refuses_the_label_step_where_no_ui_can_show_the_form(tmp_path, monkeypatch, capsys):
    from faithforge.app.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("FAITHFORGE_LABEL__ENABLED", "true")
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "-w", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "label.enabled asks for labels in the Prefect UI" in err and "faithforge label" in err
    assert not (tmp_path / "ws").exists()  # refused before any work
