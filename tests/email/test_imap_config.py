"""The imap connector's config: secrets from the environment, checks that name the key."""

from __future__ import annotations

import pytest

from hub.config import ConfigError, validate_config


def entry(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "mb", "type": "imap", "host": "imap.city.example",
                               "username": "complaints@city.example",
                               "password": "${IMAP_PASSWORD}"}
    base.update(kw)
    return base


def test_password_comes_from_the_environment_and_is_secret() -> None:
    cfg = validate_config({"connectors": [entry()]}, env={"IMAP_PASSWORD": "s3cret-pass"})
    conn = cfg.connectors[0]
    assert conn.password.get_secret_value() == "s3cret-pass"  # type: ignore[attr-defined]
    assert "s3cret-pass" not in repr(conn) and conn.effective_port == 993  # type: ignore[attr-defined]


@pytest.mark.parametrize(("kw", "message"), [
    ({"password": None}, "set password (e.g. ${IMAP_PASSWORD}), oauth2_token or oauth2"),
    ({"idle_renew": "29m"}, "idle_renew: must be at most 25m"),
    ({"processed_folder": "INBOX"}, "processed_folder must not be one of the folders read"),
    ({"tls": "ssl"}, "connectors[0].tls"),
    ({"max_message_size": "huge"}, 'expected a size like "25MB", got "huge"'),
])
def test_bad_values_are_reported(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config({"connectors": [entry(**kw)]}, env={"IMAP_PASSWORD": "x-secret"})
    assert message in str(err.value)
    assert "x-secret" not in str(err.value)


def test_oauth2_refresh_settings_are_secret_and_exclusive() -> None:
    env = {"IMAP_PASSWORD": "x-secret", "RT": "rt-secret-91", "CS": "cs-secret-17"}
    oauth2 = {"token_url": "https://login.example/token", "client_id": "hub",
              "client_secret": "${CS}", "refresh_token": "${RT}"}
    cfg = validate_config({"connectors": [entry(password=None, oauth2=oauth2)]}, env=env)
    conn = cfg.connectors[0]
    assert conn.oauth2.refresh_token.get_secret_value() == "rt-secret-91"  # type: ignore[attr-defined]
    assert "rt-secret-91" not in repr(conn) and "cs-secret-17" not in repr(conn)
    with pytest.raises(ConfigError) as err:
        validate_config({"connectors": [entry(oauth2=oauth2)]}, env=env)
    assert "set only one of password, oauth2_token and oauth2 (got password and oauth2)" \
        in str(err.value)
    with pytest.raises(ConfigError) as err:
        validate_config({"connectors": [entry(password=None, oauth2={**oauth2,
                                                                      "token_url": "ftp://x"})]},
                        env=env)
    assert "connectors[0].oauth2.token_url" in str(err.value)
    for secret in env.values():
        assert secret not in str(err.value)
