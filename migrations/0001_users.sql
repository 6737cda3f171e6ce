-- authgate's users table. Runs with search_path set to the configured
-- schema, so names here are unqualified.

CREATE TABLE users (
    user_id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    username        text        NOT NULL UNIQUE CHECK (username <> ''),
    email           text,
    hashed_password text        NOT NULL,
    roles           text[]      NOT NULL DEFAULT '{}',
    disabled        boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Keeps updated_at true for edits made with plain SQL as well.
CREATE FUNCTION users_set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER users_updated_at
    BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION users_set_updated_at();
