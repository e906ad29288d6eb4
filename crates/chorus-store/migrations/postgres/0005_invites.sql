-- Invites: single-use codes an administrator hands out when sign-up is by invite
-- (`auth.registration = "invite"`). Only the SHA-256 of a code is kept (hex), so the
-- table gives a reader no usable code. A code is used up by setting `used_by` in the
-- transaction that creates the account; `used_by IS NULL` in that update's condition
-- is what keeps two sign-ups from sharing one code (the second waits for the first's
-- row lock, then finds it used).
CREATE TABLE invites (
    code_sha256 TEXT PRIMARY KEY,
    -- Who made it (NULL: `chorus users invite`, on the server's machine).
    created_by  UUID REFERENCES users (id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_by     UUID UNIQUE REFERENCES users (id),
    used_at     BIGINT
);
