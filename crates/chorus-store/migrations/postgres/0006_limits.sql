-- Groups are counted per owner (a user owns at most limits.max_groups_per_user).
CREATE INDEX conversations_by_owner ON conversations (owner_id) WHERE kind = 'group';
