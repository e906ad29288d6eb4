-- Outside identities (an OIDC issuer and the subject it names) and the user created for
-- each on first sight. Such users have no password: their `password_hash` is empty,
-- which no password verifies against.
CREATE TABLE identities (
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    user_id    TEXT NOT NULL UNIQUE REFERENCES users (id),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, subject)
);
