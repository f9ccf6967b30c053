"""A password inside a server URL never reaches a message, a log line or the run store (issue 25, item 9).

`http://admin:PASSWORD@127.0.0.1:…` was printed whole in the error of an unreachable server.
"""

from __future__ import annotations

import logging

import pytest

from faithforge.core.errors import UserError

SECRET = "PASSWORD-7f3a"


def test_an_unreachable_server_is_named_without_its_password(caplog):
    from faithforge.backends import make_backend
    from faithforge.backends.http import HttpOptions
    from tests.fixtures.processes import free_port

    url = f"http://admin:{SECRET}@127.0.0.1:{free_port()}"
    backend = make_backend("openai", "m", base_url=url, http=HttpOptions(retries=0, connect_timeout_s=2.0))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UserError) as err:
        backend.chat([{"role": "user", "content": "hi"}])
    assert SECRET not in str(err.value) and "admin:***@127.0.0.1" in str(err.value)
    assert SECRET not in caplog.text


def test_the_cli_line_for_a_bad_url_keeps_the_password_out(tmp_path, monkeypatch, capsys):
    from faithforge.app.cli import main

    monkeypatch.setattr("faithforge.app.demo_runner.run_pipeline_with_progress",
                        lambda *a, **k: pytest.fail("the bad URL passed the checks"))
    config = tmp_path / "c.yaml"
    config.write_text(f"generate:\n  backend: openai\n  base_url: ftp://admin:{SECRET}@127.0.0.1:1/v1\n")
    with pytest.raises(SystemExit) as code:
        main(["demo", "-c", str(config), "-w", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert code.value.code == 2 and "admin:***@" in err and SECRET not in err


def test_every_user_error_redacts_urls_when_it_is_made():
    message = str(UserError(f"cannot reach postgresql+psycopg://u:{SECRET}@db:5432/x or http://h:1/ ({SECRET}?)"))
    assert message == "cannot reach postgresql+psycopg://u:***@db:5432/x or http://h:1/ (PASSWORD-7f3a?)"
