"""An entry's own settings checked against its `Options` (`faithforge.core.settings`): judges and backends alike."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from faithforge.core.settings import SettingsError, validated_model, validated_settings


class Doubling(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    api_base: str = Field("x", alias="apiBase")
    twice: int = 1
    token: SecretStr = SecretStr("")
    hidden: int = Field(3, exclude=True)

    @field_validator("twice")
    @classmethod
    def _double(cls, value: int) -> int:
        return value * 2


def check(given):
    return validated_model(Doubling, given, where="backend_options.b", entry="b", kind="backend")


def test_a_setting_given_by_its_alias_is_kept_and_validated_once():
    """The backends' settings were validated a second time from the dump: a field given by its alias (what the UI
    form writes) fell back to its default, and a validator ran twice (a review, 2026-12-07)."""
    settings = check({"apiBase": "y", "twice": 2})
    assert settings.api_base == "y" and settings.twice == 4
    assert check({"api_base": "z"}).api_base == "z"
    assert validated_settings(Doubling, {"hidden": 5}, where="w", entry="b", kind="backend")["hidden"] == 5


def test_the_forms_masked_secret_means_not_set_and_a_typo_is_one_line():
    assert check({"token": "**********"}).token.get_secret_value() == ""
    with pytest.raises(SettingsError) as err:
        check({"twise": 2})
    assert str(err.value) == "backend_options.b: unknown setting twise; the b backend takes api_base, twice, token, hidden"
    assert (err.value.where, err.value.entry) == ("backend_options.b", "b")
