-- Which secret key hashed each row (a short public id of the key, see
-- `SecretKeys::id` in authd/src/source/postgres.rs), so a key rotation can tell when no
-- live token is hashed under the old key any more. NULL: hashed before this column existed.
ALTER TABLE authd_tokens ADD COLUMN secret_key_id text;
