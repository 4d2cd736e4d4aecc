-- The sandbox's egress policy: the API's `net_policy` as JSON, normalised by the server. Rows
-- made before policies existed hold `{}`, which reads as `public` with no rules (what they had).
ALTER TABLE sandboxes ADD COLUMN net_policy TEXT NOT NULL DEFAULT '{}'
    CHECK (json_valid(net_policy));
