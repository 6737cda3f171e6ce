-- The second factor (TOTP): the user's secret, sealed with the key of
-- [users] totp_key_env ("v1:" + base64); NULL when the user has none.

ALTER TABLE users ADD COLUMN totp_secret text;
