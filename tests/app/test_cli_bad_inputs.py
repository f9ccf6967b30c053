"""A table of bad inputs through the real `faithforge` entry point: each ends with exit 2 and ONE line, no traceback.

Rows call `faithforge.app.cli.main` in this process (the same function the `faithforge` script runs; a fresh
interpreter per row would cost ~4 s each for imports alone). Every row fails in validation, before any model or
Prefect server starts. `test_cli.py` runs a few of the same inputs in a real subprocess.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

GOOD_SPEC = Path(__file__).resolve().parents[2] / "configs" / "specs" / "grounded-summaries.yaml"
NOT_UTF8 = b"train:\n  steps: 4  # caf\xe9 in Latin-1\n"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def _labels(tmp: Path, *rows: str | bytes) -> str:
    body = b"".join((r if isinstance(r, bytes) else r.encode()) + b"\n" for r in rows)
    return str(_write(tmp / "labels.jsonl", body))


def _good_labels(tmp: Path) -> str:
    return _labels(tmp, *(json.dumps({"source": f"Ivo sold hats in Split on day {i}.", "summary": f"Ivo sold hats "
                                      f"on day {i}." if i % 2 else "Vera sold boats.", "label": i % 2})
                          for i in range(8)))


def _two_documents(tmp: Path) -> str:
    return str(_write(tmp / "docs.jsonl", '{"document": "Ivo sold hats in Split. He was glad."}\n'
                                          '{"document": "Vera bought a boat in Nantes. It was red."}\n'))


def _garbled_db(tmp: Path) -> Path:
    return _write(tmp / "ws" / "faithforge.db", b"this is not a database\x00" * 64)


def _row(args, env=None, setup=None, owner="this"):
    return {"args": args, "env": env or {}, "setup": setup, "owner": owner}


# Each row: a function of the test's tmp folder giving (argv, env). `owner` names who fixes the row when it fails.
ROWS = {
    # --- configuration files -------------------------------------------------------------------------------------
    "config-missing": lambda t: (["demo", "-c", str(t / "missing.yaml"), "-w", str(t / "ws")], {}),
    "config-is-a-directory": lambda t: (["demo", "-c", str(t), "-w", str(t / "ws")], {}),
    "set-without-a-value": lambda t: (["demo", "--set", "train.steps", "-w", str(t / "ws")], {}),
    "set-empty-part": lambda t: (["demo", "--set", "train..steps=3", "-w", str(t / "ws")], {}),
    "set-out-of-range": lambda t: (["demo", "--set", "train.steps=0", "-w", str(t / "ws")], {}),
    "set-unknown-option": lambda t: (["demo", "--set", "train.epochs=3", "-w", str(t / "ws")], {}),
    # /dev/zero exists but is no regular file: it used to be reported "not found" (round 3's leftover)
    "config-is-an-endless-device": lambda t: (["demo", "-c", "/dev/zero", "-w", str(t / "ws")], {}),
    "config-not-utf8": lambda t: (["demo", "-c", str(_write(t / "c.yaml", NOT_UTF8)), "-w", str(t / "ws")], {}),
    "config-bad-yaml": lambda t: (["demo", "-c", str(_write(t / "c.yaml", "train: [1, 2\n")), "-w", str(t / "ws")], {}),
    "config-is-a-list": lambda t: (["demo", "-c", str(_write(t / "c.yaml", "- 1\n- 2\n")), "-w", str(t / "ws")], {}),
    "config-unknown-option": lambda t: (["demo", "-c", str(_write(t / "c.yaml", "train:\n  epochs: 3\n")),
                                         "-w", str(t / "ws")], {}),
    "config-several-problems": lambda t: (["demo", "-c", str(_write(
        t / "c.yaml", "train:\n  steps: 0\n  beta: -1\nevaluate:\n  judge: vibes\n")), "-w", str(t / "ws")], {}),
    "config-steps-not-a-number": lambda t: (["demo", "-c", str(_write(t / "c.yaml", "train:\n  steps: many\n")),
                                             "-w", str(t / "ws")], {}),
    "config-empty-workspace": lambda t: (["demo", "-c", str(_write(t / "c.yaml", 'workspace: ""\n'))], {}),
    "config-negative-seed": lambda t: (["demo", "-c", str(_write(t / "c.yaml", "seed: -1\n")), "-w", str(t / "ws")],
                                       {}),
    "config-pairs-val-fraction": lambda t: (["demo", "-c", str(_write(t / "c.yaml", "pairs:\n  val_fraction: 1.5\n")),
                                             "-w", str(t / "ws")], {}),
    "config-pairs-builder": lambda t: (["demo", "-c", str(_write(t / "c.yaml", "pairs:\n  builder: magic\n")),
                                        "-w", str(t / "ws")], {}),
    "config-nli-without-checkpoint": lambda t: (["demo", "-c", str(_write(t / "c.yaml", "evaluate:\n  judge: nli\n")),
                                                 "-w", str(t / "ws")], {}),
    "config-model-path-without-weights": lambda t: (["demo", "-c", str(_write(
        t / "c.yaml", f"model:\n  path: {t / 'no-model'}\nwarm_start:\n  enabled: false\n")), "-w", str(t / "ws")], {}),
    "config-generate-backend-bogus": lambda t: (["demo", "-c", str(_write(t / "c.yaml", "generate:\n  backend: bogus\n")),
                                                 "-w", str(t / "ws")], {}),
    "config-generate-spec-missing": lambda t: (["demo", "-c", str(_write(
        t / "c.yaml", f"generate:\n  backend: ollama\n  spec: {t / 'missing-spec.yaml'}\n")), "-w", str(t / "ws")], {}),
    "config-unknown-gpu-profile": lambda t: (["demo", "-w", str(t / "ws"), "--profile", "gtx-9000"], {}),
    # --- environment variables -----------------------------------------------------------------------------------
    "env-steps-not-a-number": lambda t: (["demo", "-w", str(t / "ws")], {"FAITHFORGE_TRAIN__STEPS": "abc"}),
    "env-unknown-option": lambda t: (["demo", "-w", str(t / "ws")], {"FAITHFORGE_TRAIN__EPOCHS": "3"}),
    "env-unknown-section": lambda t: (["demo", "-w", str(t / "ws")], {"FAITHFORGE_TRAINN__STEPS": "3"}),
    "env-misspelled-variable": lambda t: (["demo"], {"FAITHFORGE_WORKSPAC": str(t / "ws")}),
    "env-unknown-variable": lambda t: (["demo", "-w", str(t / "ws")], {"FAITHFORGE_STEPZ": "3"}),
    "env-empty-workspace": lambda t: (["demo"], {"FAITHFORGE_WORKSPACE": ""}),
    "env-config-missing": lambda t: (["demo", "-w", str(t / "ws")], {"FAITHFORGE_CONFIG": str(t / "nope.yaml")}),
    "env-negative-seed": lambda t: (["demo", "-w", str(t / "ws")], {"FAITHFORGE_SEED": "-5"}),
    "env-database-url-bad-dialect": lambda t: (["demo", "-w", str(t / "ws")],
                                               {"FAITHFORGE_DATABASE_URL": "notadialect://x"}),
    # --- workspaces ----------------------------------------------------------------------------------------------
    "workspace-empty-string": lambda t: (["demo", "-w", ""], {}),
    "workspace-blank": lambda t: (["demo", "-w", "   "], {}),
    "workspace-under-a-file": lambda t: (["demo", "-w", str(_write(t / "f", "x") / "ws")], {}),
    "workspace-is-a-file": lambda t: (["demo", "-w", str(_write(t / "f", "x"))], {}),
    "workspace-fresh-not-ours": lambda t: (["demo", "-w", str(_write(t / "mine" / "models" / "mine.txt", "x")
                                                               .parent.parent), "--fresh"], {}),
    # --- run store URLs ------------------------------------------------------------------------------------------
    "store-garbled-demo": lambda t: (_garbled_db(t) and ["demo", "-w", str(t / "ws")], {}),
    "store-unopenable-demo": lambda t: (["demo", "-w", str(t / "ws")],
                                        {"FAITHFORGE_DATABASE_URL": "sqlite:////nonexistent/dir/x.db"}),
    "store-unopenable-compare": lambda t: (["eval", "compare", "a", "b", "--database-url",
                                            "sqlite:////nonexistent/x.db"], {}),
    "store-bad-dialect-compare": lambda t: (["eval", "compare", "a", "b", "--database-url", "notadialect://x"], {}),
    "store-garbled-compare": lambda t: (_garbled_db(t) and ["eval", "compare", "a", "b", "--workspace",
                                                              str(t / "ws")], {}),
    "store-missing-compare": lambda t: (["eval", "compare", "a", "b", "--workspace", str(t / "empty")], {}),
    "store-garbled-runs": lambda t: (_garbled_db(t) and ["runs", "-w", str(t / "ws")], {}),
    "store-missing-runs": lambda t: (["runs", "-w", str(t / "nothing-here")], {}),
    # A store URL that names no store: read-only commands created an empty one there ("no runs yet").
    "store-url-missing-runs": lambda t: (["runs", "--database-url", f"sqlite:///{t / 'typo.db'}"], {}),
    "store-url-missing-compare": lambda t: (["eval", "compare", "a", "b", "--database-url",
                                             f"sqlite:///{t / 'typo.db'}"], {}),
    "store-url-psycopg2": lambda t: (["runs", "--database-url", "postgresql://u@127.0.0.1:1/x"], {}),
    # --- offloading (attack 4: refused only at the offloaded stage, after the stages before it ran) --------------
    "offload-stages-on-embedded-demo": lambda t: (["demo", "-w", str(t / "ws"), "--set", "gpu.offload_pool=a100",
                                                    "--set", "gpu.offload_stages=[train]",
                                                    "--set", f"storage_url=file://{t / 'store'}"],
                                                   {"PREFECT_API_URL": ""}),
    # with a Prefect server configured (never reached: refused before Prefect starts), as a deployed run has one
    "offload-stages-without-storage": lambda t: (["demo", "-w", str(t / "ws"), "--set", "gpu.offload_pool=a100",
                                                   "--set", "gpu.offload_stages=[train]"],
                                                  {"PREFECT_API_URL": "http://127.0.0.1:9/api"}),
    "offload-storage-unknown-protocol": lambda t: (["demo", "-w", str(t / "ws"), "--set", "gpu.offload_pool=a100",
                                                     "--set", "gpu.offload_stages=[train]", "--set",
                                                     "storage_url=bogus://x"], {"PREFECT_API_URL": "http://127.0.0.1:9/api"}),
    # --- generation specs and server URLs ------------------------------------------------------------------------
    "spec-missing": lambda t: (["generate", "--spec", str(t / "missing.yaml"), "--no-prefect", "-w" if False else
                                "--workspace", str(t / "ws")], {}),
    "spec-not-utf8": lambda t: (["generate", "--spec", str(_write(t / "s.yaml", b"name: caf\xe9\n")), "--no-prefect",
                                 "--workspace", str(t / "ws")], {}),
    "spec-bad-yaml": lambda t: (["generate", "--spec", str(_write(t / "s.yaml", "name: [x\n")), "--no-prefect",
                                 "--workspace", str(t / "ws")], {}),
    "spec-is-a-directory": lambda t: (["generate", "--spec", str(t), "--no-prefect", "--workspace", str(t / "ws")],
                                      {}),
    "generate-backend-bogus": lambda t: (["generate", "--spec", str(GOOD_SPEC), "--backend", "bogus",
                                          "--workspace", str(t / "ws")], {}),
    "generate-base-url-not-a-url": lambda t: (["generate", "--spec", str(GOOD_SPEC), "--backend", "ollama",
                                               "--base-url", "not-a-url", "--no-gate", "--no-prefect", "--target", "1",
                                               "--workspace", str(t / "ws")], {}),
    "generate-negative-target": lambda t: (["generate", "--spec", str(GOOD_SPEC), "--target", "-1"], {}),
    "generate-temperature-too-high": lambda t: (["generate", "--spec", str(GOOD_SPEC), "--temperature", "5"], {}),
    "generate-empty-workspace": lambda t: (["generate", "--spec", str(GOOD_SPEC), "--no-prefect", "--no-gate",
                                            "--workspace", ""], {}),
    "served-model-base-url-not-a-url": lambda t: (["demo", "-c", str(_write(
        t / "c.yaml", "evaluate:\n  served_model: qwen3:8b\n  served_base_url: not-a-url\n")), "-w", str(t / "ws")],
        {}),
    "llm-judge-base-url-ftp": lambda t: (["demo", "-c", str(_write(
        t / "c.yaml", "evaluate:\n  judge: llm\n  llm_model: qwen3:8b\n  llm_base_url: ftp://example\n")),
        "-w", str(t / "ws")], {}),
    # an attack, 2026-12-07: every stage ran and trained, then evaluate failed on the judge's server
    "llm-judge-server-not-answering": lambda t: (["demo", "-c", str(_write(
        t / "c.yaml", f"evaluate:\n  judge: llm\n  llm_model: qwen3:8b\n  llm_base_url: http://127.0.0.1:{_closed_port()}\n")),
        "-w", str(t / "ws")], {}),
    # an attack, 2026-12-07: both trained and evaluated first, then failed at the export
    "export-gguf-of-the-tiny-model": lambda t: (["demo", "-w", str(t / "ws"), "--set", "export.enabled=true"], {}),
    "export-gguf-of-an-unknown-model-type": lambda t: (["demo", "-w", str(t / "ws"), "--set", "export.enabled=true",
                                                        "--set", "export.format=gguf", "--set", "model.path=" + str(
                                                            _write(t / "m" / "config.json",
                                                                   '{"model_type": "gpt2"}').parent)], {}),
    # --- labels --------------------------------------------------------------------------------------------------
    "labels-missing": lambda t: (["eval", "calibrate", "--labels", str(t / "missing.jsonl")], {}),
    "labels-not-utf8": lambda t: (["eval", "calibrate", "--labels", _labels(
        t, b'{"source": "caf\xe9", "summary": "x", "label": 1}')], {}),
    "labels-bad-json": lambda t: (["eval", "calibrate", "--labels", _labels(t, '{"source": "a"')], {}),
    "labels-missing-field": lambda t: (["eval", "calibrate", "--labels", _labels(t, '{"source": "a", "label": 1}')],
                                       {}),
    "labels-bad-label": lambda t: (["eval", "calibrate", "--labels", _labels(
        t, json.dumps({"source": "a b", "summary": "a", "label": "maybe"}))], {}),
    "labels-empty-texts": lambda t: (["eval", "calibrate", "--labels", _labels(
        t, json.dumps({"source": "", "summary": "", "label": 1}))], {}),
    "labels-is-a-directory": lambda t: (["eval", "calibrate", "--labels", str(t)], {}),
    "calibrate-unknown-judge": lambda t: (["eval", "calibrate", "--labels", _labels(
        t, json.dumps({"source": "a b", "summary": "a", "label": 0})), "--judge", "vibes"], {}),
    "calibrate-nli-without-checkpoint": lambda t: (["eval", "calibrate", "--labels", _labels(
        t, json.dumps({"source": "a b", "summary": "a", "label": 0})), "--judge", "nli"], {}),
    # --- found by an attack on 2026-12-05: each used to do its work first, or lose what was there ---------------
    "tiny-model-over-a-folder": lambda t: (["tiny-model", str(_write(t / "mydocs" / "thesis.txt", "mine").parent)],
                                           {}),
    "tiny-model-over-a-file": lambda t: (["tiny-model", str(_write(t / "notes.txt", "mine"))], {}),
    "tiny-model-blank-name": lambda t: (["tiny-model", "  "], {}),  # wrote a folder named by two spaces
    "tiny-model-newline-name": lambda t: (["tiny-model", str(t / "new\nline")], {}),  # split every line naming it
    "tiny-model-current-folder": lambda t: (_write(t / "notes.txt", "mine") and ["tiny-model", "."], {}),
    "calibrate-llm-url-not-a-url": lambda t: (["eval", "calibrate", "--labels", _good_labels(t), "--judge", "llm",
                                               "--llm-base-url", "notaurl", "--workspace", str(t / "ws")], {}),
    "calibrate-workspace-is-a-file": lambda t: (["eval", "calibrate", "--labels", _good_labels(t), "--workspace",
                                                 str(_write(t / "afile", "x"))], {}),
    "fit-combination-out-is-a-users-file": lambda t: (["eval", "fit-combination", "--labels", _good_labels(t),
                                                       "--judge", "grounding", "--out", str(_write(t / "keep.json",
                                                                                                   "mine"))], {}),
    "fit-combination-out-under-a-file": lambda t: (["eval", "fit-combination", "--labels", _good_labels(t),
                                                    "--judge", "grounding", "--out",
                                                    str(_write(t / "afile", "x") / "c.json")], {}),
    "judge-train-workspace-is-a-file": lambda t: (["judge", "train", "--documents", _two_documents(t), "-w",
                                                   str(_write(t / "afile", "x"))], {}),
    "judge-train-missing-column": lambda t: (["judge", "train", "--documents", _two_documents(t), "--text-column",
                                              "nope", "-w", str(t / "ws")], {}),
    "label-output-under-a-file": lambda t: (["label", _good_labels(t), "-o", str(_write(t / "afile", "x") / "l")],
                                            {}),
    "generate-workspace-is-a-file": lambda t: (["generate", "--spec", str(GOOD_SPEC), "--workspace",
                                                str(_write(t / "afile", "x"))], {}),
    "generate-unknown-gpu-profile": lambda t: (["generate", "--spec", str(GOOD_SPEC), "--gpu-profile", "gtx-9000",
                                                "--workspace", str(t / "ws")], {}),
    # --- usage ---------------------------------------------------------------------------------------------------
    "usage-unknown-option": lambda t: (["demo", "--bogus"], {}),
    "usage-unknown-command": lambda t: (["frobnicate"], {}),
    "usage-seed-not-a-number": lambda t: (["demo", "--seed", "abc", "-w", str(t / "ws")], {}),
    "gpu-unknown-profile": lambda t: (["gpu", "--profile", "gtx-9000"], {}),
}

#: Rows whose fix belongs to another part of issue 11 (generation CLI, labels), listed so a failure says whose.
OTHER_OWNERS = {"generate-backend-bogus": "generation (item 12)", "generate-base-url-not-a-url": "generation (item 9)",
                "labels-empty-texts": "labels (item 13)",
                "generate-empty-workspace": "generation CLI (its progress bar starts before the workspace is checked)"}


def _validation_passed(*args, **kwargs):
    raise AssertionError("the bad input passed validation and the pipeline would have started")


def run_cli(argv: list[str], env: dict[str, str], monkeypatch, capsys) -> tuple[int, str]:
    from faithforge.app.cli import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), captured.out + captured.err


@pytest.mark.parametrize("name", sorted(ROWS))
def test_bad_input_is_one_line_and_exit_2(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a row that fell back to ./.faithforge would write here, not in the repository
    for var in ("FAITHFORGE_CONFIG", "FAITHFORGE_WORKSPACE", "FAITHFORGE_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    # A row that passed validation would start the whole pipeline: stop it there, as a failure of the row.
    monkeypatch.setattr("faithforge.app.demo_runner.run_pipeline_with_progress", _validation_passed)
    argv, env = ROWS[name](tmp_path)
    code, output = run_cli(argv, env, monkeypatch, capsys)
    lines = [line for line in output.splitlines() if line.strip()]
    owner = OTHER_OWNERS.get(name, "cli")
    assert "Traceback" not in output, f"[{owner}] traceback:\n{output}"
    assert code == 2, f"[{owner}] exit {code}:\n{output}"
    assert len(lines) == 1, f"[{owner}] {len(lines)} lines:\n{output}"
    assert lines[0].lower().startswith("error"), lines[0]


def test_what_a_refused_command_found_there_is_kept(tmp_path, monkeypatch, capsys):
    """`tiny-model mydocs` replaced the folder, `fit-combination --out keep.json` the file (both exit 0)."""
    monkeypatch.chdir(tmp_path)
    for name in ("tiny-model-over-a-folder", "fit-combination-out-is-a-users-file", "tiny-model-current-folder"):
        argv, env = ROWS[name](tmp_path)
        code, _ = run_cli(argv, env, monkeypatch, capsys)
        assert code == 2, name
    assert (tmp_path / "mydocs" / "thesis.txt").read_text() == "mine"
    assert (tmp_path / "keep.json").read_text() == "mine" and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_misspelled_variable_is_named_with_the_right_one_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    """`FAITHFORGE_WORKSPAC=/data/ff faithforge demo` ran in ./.faithforge without a word (an attack, 2026-12-07);
    the tools' and the tests' own variables are still let through."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FAITHFORGE_WORKSPACE", raising=False)
    monkeypatch.setattr("faithforge.app.demo_runner.run_pipeline_with_progress", _validation_passed)
    code, output = run_cli(["demo"], {"FAITHFORGE_WORKSPAC": str(tmp_path / "ws")}, monkeypatch, capsys)
    assert code == 2 and "did you mean FAITHFORGE_WORKSPACE?" in output, output
    assert sorted(os.listdir(tmp_path)) == []
    monkeypatch.delenv("FAITHFORGE_WORKSPAC")
    code, output = run_cli(["demo"], {"FAITHFORGE_TRAIN_STEPS": "5"}, monkeypatch, capsys)  # one underscore short
    assert code == 2 and "did you mean FAITHFORGE_TRAIN__STEPS?" in output, output

    from faithforge.core.config import env_overrides

    assert env_overrides({"FAITHFORGE_GPU_PROFILE": "rtx-3060-12gb", "FAITHFORGE_CONFIG": "c.yaml",
                          "FAITHFORGE_TEST_POSTGRES_URL": "postgresql://x", "FAITHFORGE_TRAIN__STEPS": "4"}) \
        == {"train": {"steps": 4}}


def test_a_read_only_command_creates_no_store_where_its_url_names_none(tmp_path, monkeypatch, capsys):
    for name in ("store-url-missing-runs", "store-url-missing-compare"):
        argv, env = ROWS[name](tmp_path)
        code, output = run_cli(argv, env, monkeypatch, capsys)
        assert code == 2 and "no run store at" in output, output
    assert not (tmp_path / "typo.db").exists()


def test_demo_real_refuses_bad_documents_before_it_imports_the_model(tmp_path, monkeypatch, capsys):
    """The import (517 MB, ~15 s) came first, then "holds no documents" (an attack, 2026-12-07)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("faithforge.app.cli._import_real_model", _validation_passed)
    (tmp_path / "empty.jsonl").write_text("")
    for argv in (["--documents", "empty.jsonl"], ["--set", "evaluate.judge=nli"]):
        code, output = run_cli(["demo", "--real", "-w", str(tmp_path / "ws"), *argv], {}, monkeypatch, capsys)
        assert code == 2 and "Traceback" not in output and len(output.strip().splitlines()) == 1, output
    assert not list((tmp_path / "ws").glob("models/*"))  # nothing imported


def test_demo_set_data_options_stand_beside_documents(tmp_path, monkeypatch, capsys):
    """`--set data.text_column=text` was dropped whenever --documents was given, and the error then asked for the
    very setting (an attack); the guessed `id` column yields to yours."""
    import json

    monkeypatch.chdir(tmp_path)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": str(i), "text": f"Ann{i} went to Rome on Monday."}) + "\n"
                            for i in range(40)))
    seen = {}

    def imported(cfg, documents):  # instead of the 15 s import: a folder check_model_folder accepts
        Path(cfg.model.path).mkdir(parents=True)
        (Path(cfg.model.path) / "config.json").write_text('{"model_type": "llama"}')

    monkeypatch.setattr("faithforge.app.cli._import_real_model", imported)
    def started(cfg, verbose=False):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr("faithforge.app.demo_runner.run_pipeline_with_progress", started)
    code, output = run_cli(["demo", "--real", "-w", str(tmp_path / "ws"), "--documents", str(docs), "--set",
                            "data.text_column=text", "--set", "data.id_column="], {}, monkeypatch, capsys)
    assert "cfg" in seen, output
    data = seen["cfg"].data
    assert (data.text_column, data.id_column, data.documents_path) == ("text", None, str(docs))


def test_the_table_is_large_enough():
    assert len(ROWS) >= 40


def test_verbose_shows_the_traceback(tmp_path, monkeypatch, capsys):
    from faithforge.core.errors import UserError

    config = _write(tmp_path / "c.yaml", NOT_UTF8)
    from faithforge.app.cli import main

    with pytest.raises(UserError, match="not UTF-8"):
        main(["-v", "demo", "-c", str(config), "-w", str(tmp_path / "ws")])


# ---------------------------------------------------------------------------------------------------------------
# Issue 25, item 5: bad input that passed the pre-start checks. Rows for what was found, then a generated family:
# for every option in the configuration schema, out-of-range, wrong-type and YAML-1.1-surprise values.

def _laughs(levels: int = 9) -> str:
    """Nested anchors: level N is nine aliases of level N-1 (9**9 strings once expanded)."""
    text = 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for level in range(1, levels + 1):
        text += f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]\n"
    return text


def _generate_row(*flags: str):
    """`faithforge generate` on the shipped spec with `flags`, in the row's own workspace."""
    return lambda t: (["generate", "--spec", str(GOOD_SPEC), "--target", "10", "--workspace", str(t / "ws"),
                       *flags], {})


def _config_row(body: str):
    return lambda t: (["demo", "-c", str(_write(t / "c.yaml", body)), "-w", str(t / "ws")], {})


def _documents_row(rows: str, extra: str = ""):
    def row(t: Path):
        docs = _write(t / "docs.jsonl", rows)
        body = (f"data:\n  documents_path: {docs}\n{extra}warm_start:\n  enabled: false\n"
                "pairs:\n  builder: on-policy\n")
        return ["demo", "-c", str(_write(t / "c.yaml", body)), "-w", str(t / "ws")], {}
    return row


def _pairs_row(content: str | bytes):
    def row(t: Path):
        pairs = _write(t / "pairs.jsonl", content)
        return ["demo", "-c", str(_write(t / "c.yaml", f"pairs:\n  path: {pairs}\n")), "-w", str(t / "ws")], {}
    return row


FOUND_ROWS = {
    "yaml-billion-laughs-train-steps": _config_row(_laughs() + "train:\n  steps: *l9\n"),
    "yaml-billion-laughs-evaluate-judge": _config_row(_laughs() + "evaluate:\n  judge: *l9\n"),
    "yaml-billion-laughs-fallback-models": _config_row(_laughs() + "generate:\n  fallback_models: *l9\n"),
    "yaml-billion-laughs-in-environment": lambda t: (["demo", "-w", str(t / "ws")], {
        "FAITHFORGE_TRAIN__STEPS": "[" + _laughs(6).replace("\n", ", ").rstrip(", ") + "]"}),
    "yaml-recursive-alias": _config_row("train: &t\n  steps: 1\n  again: *t\n"),
    "yaml-nested-3000-deep": _config_row("train:\n  steps: " + "[" * 3000 + "]" * 3000 + "\n"),
    "spec-billion-laughs": lambda t: (["generate", "--spec", str(_write(t / "spec.yaml", _laughs() + "name: *l9\n")),
                                       "--backend", "template", "--target", "10", "--workspace", str(t / "ws")], {}),
    "yaml-duplicate-section": _config_row("train:\n  steps: 4\ntrain:\n  steps: 9999\n"),
    "yaml-duplicate-option": _config_row("train:\n  steps: 4\n  steps: 9999\n"),
    "yaml-steps-yes": _config_row("train:\n  steps: yes\n"),
    "yaml-steps-underscore": _config_row("train:\n  steps: 1_0\n"),
    "yaml-steps-sexagesimal": _config_row("train:\n  steps: 1:20\n"),
    "yaml-steps-true": _config_row("train:\n  steps: true\n"),
    "seed-50-mb-string": _config_row("seed: " + "1" * 50_000_000 + "\n"),
    "seed-500-kb-string-quoted-short": _config_row("seed: '" + "1x" * 250_000 + "'\n"),
    "seed-500-kb-number": _config_row("seed: " + "1" * 500_000 + "\n"),
    "seed-above-2-32": lambda t: (["demo", "--seed", "4294967296", "-w", str(t / "ws")], {}),
    "seed-10-23": _config_row("seed: 100000000000000000000000\n"),
    "seed-2-64": _config_row(f"seed: {2 ** 64}\n"),
    "seed-huge-cli-string": lambda t: (["demo", "--seed", "1" * 100_000, "-w", str(t / "ws")], {}),
    "tiny-intermediate-size-10-12": _config_row("model:\n  tiny:\n    intermediate_size: 1000000000000\n"),
    "tiny-max-positions-1e11": _config_row("model:\n  tiny:\n    max_position_embeddings: 1.0e11\n"),
    "reference-shard-size-10-26": _config_row(f"reference:\n  shard_size: {10 ** 26}\n"),
    "train-checkpoint-every-10-26": _config_row(f"train:\n  checkpoint_every: {10 ** 26}\n"),
    "tiny-model-seed-above-2-32": lambda t: (["tiny-model", str(t / "m"), "--seed", str(2 ** 32)], {}),
    # Data files: each was reported only after Prefect started (13-30 s, 2-5 lines).
    "documents-binary-junk": _documents_row("\x00\x01\x02binary\xff junk\n"),
    "documents-missing-text-column": _documents_row('{"text": "a"}\n{"text": "b"}\n'),
    "documents-duplicate-ids": _documents_row('{"id": "1", "document": "Ann went home."}\n'
                                              '{"id": "1", "document": "Bo went out."}\n', "  id_column: id\n"),
    "documents-empty-text": _documents_row('{"document": ""}\n{"document": "Bo went out."}\n'),
    "documents-non-string": _documents_row('{"document": 5}\n{"document": ["x"]}\n'),
    "pairs-binary-junk": _pairs_row(b"\x00\x01\x02\xff\xfe junk\n"),
    "pairs-chosen-equals-rejected": _pairs_row('{"prompt": "p", "chosen": "same", "rejected": "same"}\n'),
    "pairs-missing-rejected": _pairs_row('{"prompt": "p", "chosen": "a"}\n'),
    "pairs-non-string": _pairs_row('{"prompt": "p", "chosen": 1, "rejected": 2}\n'),
    "pairs-missing-file": lambda t: (["demo", "-c", str(_write(t / "c.yaml", f"pairs:\n  path: {t / 'no.jsonl'}\n")),
                                      "-w", str(t / "ws")], {}),
    # A backend's own settings (backend_options), 2026-12-07: each refused before Prefect starts.
    "backend-option-unknown-field": _generate_row("--backend", "ollama", "--backend-option", "ollama.keepalive=1h"),
    "backend-option-not-a-duration": _generate_row("--backend", "ollama", "--backend-option", "ollama.keep_alive=1.5"),
    "backend-option-other-backend": _generate_row("--backend", "ollama", "--backend-option", "openai.api_key_env=K"),
    "backend-option-without-value": _generate_row("--backend", "ollama", "--backend-option", "ollama.keep_alive"),
    "api-key-env-with-ollama": _generate_row("--backend", "ollama", "--api-key-env", "OPENAI_API_KEY"),
    "api-key-env-given-twice": _generate_row("--backend", "openai", "--base-url", "http://127.0.0.1:9/v1",
                                             "--api-key-env", "A", "--backend-option", "openai.api_key_env=B"),
    "api-key-env-empty-here": _generate_row("--backend", "openai", "--base-url", "http://127.0.0.1:9/v1",
                                            "--api-key-env", "FF_TEST_NEVER_SET_KEY"),
    "config-llm-backend-options-typo": _config_row("evaluate:\n  llm_backend_options:\n    openai:\n"
                                                   "      api_key: OPENAI_API_KEY\n"),
    "config-generate-backend-options-template": _config_row("generate:\n  backend_options:\n    template:\n"
                                                            "      delay_s: 1\n"),
    "calibrate-backend-option-without-llm": lambda t: (["eval", "calibrate", "--labels", _good_labels(t),
                                                        "--backend-option", "ollama.keep_alive=1h", "-w",
                                                        str(t / "ws")], {}),
    "calibrate-backend-option-bad": lambda t: (["eval", "calibrate", "--labels", _good_labels(t), "--judge", "llm",
                                                "--llm-base-url", f"http://127.0.0.1:{_closed_port()}",
                                                "--backend-option", "ollama.keep_alive=soon", "-w", str(t / "ws")],
                                               {}),
}


def test_a_backend_settings_refusal_names_the_flag_and_never_the_value(tmp_path, monkeypatch, capsys):
    """A value may be a secret (a third-party backend's token): messages name `NAME.FIELD` only."""
    for extra in (["--backend-option", "openai.token=sk-NEVER-PRINTED"],
                  ["--backend-option", "openai.api_key_env={sk-NEVER-PRINTED"]):
        argv, env = _generate_row("--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", *extra)(tmp_path)
        code, output = run_cli(argv, env, monkeypatch, capsys)
        assert code == 2 and "sk-NEVER-PRINTED" not in output and "openai" in output, output
    argv, env = _generate_row("--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--api-key-env",
                              "FF_TEST_NEVER_SET_KEY")(tmp_path)
    monkeypatch.delenv("FF_TEST_NEVER_SET_KEY", raising=False)
    code, output = run_cli(argv, env, monkeypatch, capsys)
    assert code == 2 and "--api-key-env FF_TEST_NEVER_SET_KEY: that environment variable is empty" in output, output
    assert "with --api-key-secret" in output  # named as the flags that set them
    argv, env = _generate_row("--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--api-key-env",
                              "gsk_pasted_key_1234567890")(tmp_path)  # a key where the variable's name goes
    code, output = run_cli(argv, env, monkeypatch, capsys)
    assert code == 2 and "gsk_pasted" not in output and "not the key" in output, output
    code, output = run_cli(["demo", "-w", str(tmp_path / "ws"), "--set", "generate.backend_options.openai=sk-SECRET3"],
                           {}, monkeypatch, capsys)
    assert code == 2 and "sk-SECRET3" not in output and "generate.backend_options.openai" in output, output


def _check_bad_input(name: str, argv, env, tmp_path, monkeypatch, capsys, limit_chars: int = 300) -> None:
    import time

    monkeypatch.chdir(tmp_path)
    for var in ("FAITHFORGE_CONFIG", "FAITHFORGE_WORKSPACE", "FAITHFORGE_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("faithforge.app.demo_runner.run_pipeline_with_progress", _validation_passed)
    started = time.perf_counter()
    code, output = run_cli(argv, env, monkeypatch, capsys)
    seconds = time.perf_counter() - started
    lines = [line for line in output.splitlines() if line.strip()]
    shown = output[:600]
    assert "Traceback" not in output, f"{name}: traceback:\n{shown}"
    assert code == 2, f"{name}: exit {code}:\n{shown}"
    assert len(lines) == 1 and lines[0].startswith("error"), f"{name}: {len(lines)} lines:\n{shown}"
    assert len(lines[0]) <= limit_chars, f"{name}: {len(lines[0])} characters:\n{shown}"
    assert seconds < 5, f"{name}: took {seconds:.1f} s"


@pytest.mark.parametrize("name", sorted(FOUND_ROWS))
def test_bad_input_found_in_round_3_is_refused_before_any_work(name, tmp_path, monkeypatch, capsys):
    argv, env = FOUND_ROWS[name](tmp_path)
    # A data file's line names the file once per bad row (two rows, long temporary paths): 600 characters here;
    # a bad value is quoted in at most ~120 (the 50 MB seed's line is short).
    _check_bad_input(name, argv, env, tmp_path, monkeypatch, capsys, limit_chars=600)


def _options():
    """(dotted name, field info) of every leaf option of the configuration, sections walked."""
    from pydantic import BaseModel

    from faithforge.core.config import PipelineConfig

    def walk(model, prefix):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                yield from walk(annotation, prefix + [name])
            else:
                yield prefix + [name], field

    return list(walk(PipelineConfig, []))


def _bounds(field) -> dict:
    found = {}
    for item in field.metadata:
        for key in ("ge", "gt", "le", "lt"):
            if getattr(item, key, None) is not None:
                found[key] = getattr(item, key)
    return found


def _kind(field) -> str:
    import types
    import typing

    annotation = field.annotation
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    options = [o for o in options if o is not type(None)]
    if bool in options:
        return "bool"
    if int in options:
        return "int"
    if float in options:
        return "float"
    if any(typing.get_origin(o) is list for o in options):
        return "list"
    if any(typing.get_origin(o) is typing.Literal for o in options):
        return "choice"
    return "str"


def _bad_values(field) -> dict[str, str]:
    """YAML texts a person could write for this option, each wrong: out of range, wrong type, YAML 1.1 habit."""
    kind = _kind(field)
    values = {"wrong-type-mapping": "{a: 1}"}
    if kind in ("int", "float"):
        bounds = _bounds(field)
        low = bounds.get("ge", bounds.get("gt"))
        high = bounds.get("le", bounds.get("lt"))
        if low is not None:
            values["below-minimum"] = repr(low - 1 if "ge" in bounds else low)
        values["above-maximum"] = repr(high + 1 if "le" in bounds and kind == "int" else high * 2 + 1)
        values["wrong-type-text"] = "many"
        values["yaml11-yes"] = "yes"
        values["yaml11-underscore"] = "1_0"
        values["yaml11-sexagesimal"] = "1:20"
        values["not-finite"] = ".nan"
        if kind == "int":
            values["fractional"] = "2.5"
    elif kind == "bool":
        values["wrong-type-list"] = "[1]"
        values["wrong-type-text"] = "maybe"
    elif kind == "list":
        values["wrong-type-number"] = "5"
    elif kind == "choice":
        values["not-a-choice"] = "surely-not-a-choice"
    else:
        values["wrong-type-list"] = "[1, 2]"
    return values


def _yaml_for(dotted: list[str], raw: str) -> str:
    text, indent = "", ""
    for part in dotted[:-1]:
        text += f"{indent}{part}:\n"
        indent += "  "
    return text + f"{indent}{dotted[-1]}: {raw}\n"


FAMILY = {f"{'.'.join(dotted)}={case}": (dotted, raw)
          for dotted, field in _options() for case, raw in _bad_values(field).items()}


def test_every_numeric_option_has_both_bounds():
    """A number nobody can honour (seed 2**64, 10**26 checkpoints) is refused before work, so every number has a
    ceiling its consumer can honour."""
    unbounded = [".".join(d) for d, f in _options() if _kind(f) in ("int", "float")
                 and not ({"le", "lt"} & _bounds(f).keys() and {"ge", "gt"} & _bounds(f).keys())]
    assert unbounded == []
    assert len(FAMILY) >= 300


@pytest.mark.parametrize("case", sorted(FAMILY))
def test_every_option_refuses_its_bad_values_in_one_line(case, tmp_path, monkeypatch, capsys):
    dotted, raw = FAMILY[case]
    argv = ["demo", "-c", str(_write(tmp_path / "c.yaml", _yaml_for(dotted, raw)))]
    if dotted != ["workspace"]:  # -w would override the bad value under test
        argv += ["-w", str(tmp_path / "ws")]
    _check_bad_input(case, argv, {}, tmp_path, monkeypatch, capsys)
    assert not (tmp_path / "ws").exists(), f"{case}: the workspace was created before the value was refused"


def test_a_sample_of_the_family_through_the_real_command(tmp_path):
    """The same code path in a fresh `faithforge` process: exit 2, one line, and little CPU time (the wall clock
    of a loaded 2-core machine is not the program's)."""
    import random
    import resource
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[2]
    rng = random.Random(25)
    for number, case in enumerate(rng.sample(sorted(FAMILY), 4) + ["train.steps=yaml11-yes"]):
        dotted, raw = FAMILY[case]
        folder = tmp_path / str(number)
        config = _write(folder / "c.yaml", _yaml_for(dotted, raw))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "faithforge.app.cli", "demo", "-c", str(config), "-w",
                               str(folder / "ws")], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(repo)})
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and len(lines[0]) <= 300, (case, proc.stdout, proc.stderr)
        assert cpu < 5, f"{case}: {cpu:.1f} s of CPU ({wall:.1f} s wall)"
        assert not (folder / "ws").exists()


def test_a_config_that_is_a_device_or_a_pipe_is_read_with_a_limit_not_called_missing(tmp_path):
    """`--config /dev/zero` said "not found" (it exists); a pipe (`-c <(…)`) is a fine place for a config."""
    from faithforge.core.config import load_config
    from faithforge.core.errors import UserError

    with pytest.raises(UserError) as info:
        load_config("/dev/zero")
    assert "not found" not in str(info.value) and "not a regular file" in str(info.value)
    read_end, write_end = os.pipe()
    os.write(write_end, b"seed: 3\n")
    os.close(write_end)
    try:
        assert load_config(f"/dev/fd/{read_end}").seed == 3
    finally:
        os.close(read_end)


def test_demo_set_reaches_the_config_after_the_file_and_the_environment_and_before_the_flags(tmp_path, monkeypatch,
                                                                                               capsys):
    """Round 3 of the judge issue: overriding one setting took a YAML file or an undocumented variable while
    bench/real_model.py took --set; `demo --set section.field=value` now does, by the same value rules."""
    seen = {}

    def capture(config, verbose=False):  # noqa: ARG001 - the pipeline itself is not this test's subject
        seen["config"] = config
        return {}

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("faithforge.app.demo_runner.run_pipeline_with_progress", capture)
    monkeypatch.setattr("faithforge.app.demo_report.print_summary", lambda summary: None)
    config = _write(tmp_path / "c.yaml", "train:\n  steps: 7\n  beta: 0.3\n")
    code, output = run_cli(["demo", "-c", str(config), "-w", str(tmp_path / "run #2"), "--seed", "5",
                            "--set", "train.steps=9", "--set", "seed=4", "--set", "evaluate.judge=[grounding, nli]",
                            "--set", "evaluate.nli_checkpoint=models/my nli #1"],
                           {"FAITHFORGE_TRAIN__STEPS": "8", "FAITHFORGE_TRAIN__LORA_R": "4"}, monkeypatch, capsys)
    assert code == 0, output
    cfg = seen["config"]
    assert cfg.train.steps == 9 and cfg.train.beta == 0.3 and cfg.train.lora_r == 4  # --set > env > file
    assert cfg.seed == 5  # the --seed flag wins over --set seed
    assert cfg.evaluate.judge == ["grounding", "nli"]
    assert cfg.evaluate.nli_checkpoint == "models/my nli #1"  # text is taken literally, as in the variables


@pytest.mark.parametrize("row, says", [
    ("offload-stages-on-embedded-demo", "runs on its own embedded Prefect server, which has no deployments"),
    ("offload-storage-unknown-protocol", "cannot open storage URL 'bogus://x' (Protocol not known: bogus)"),
    ("offload-stages-without-storage", "offloading needs shared storage: set storage_url"),
])
def test_offloading_that_cannot_work_is_refused_before_any_stage(row, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("faithforge.app.demo_runner.run_pipeline_with_progress", _validation_passed)
    argv, env = ROWS[row](tmp_path)
    code, output = run_cli(argv, env, monkeypatch, capsys)
    assert code == 2 and says in output, output
    assert not (tmp_path / "ws" / "datasets").exists() or not any((tmp_path / "ws" / "datasets").iterdir())
