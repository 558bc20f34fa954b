-- Opaque bearer tokens for the `postgres` identity source. A token is
-- `<prefix><id>.<secret>`; only a keyed hash (HMAC-SHA256 with the source's
-- secret key) of `<id>.<secret>` is stored, never the secret itself.
CREATE TABLE authd_tokens (
    id          text        PRIMARY KEY,
    secret_hash bytea       NOT NULL,
    username    text        NOT NULL CHECK (username <> ''),
    uid         text        NOT NULL DEFAULT '',
    groups      text[]      NOT NULL DEFAULT '{}',
    extra       jsonb       NOT NULL DEFAULT '{}',
    expires_at  timestamptz,
    disabled    boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX authd_tokens_username ON authd_tokens (username);
