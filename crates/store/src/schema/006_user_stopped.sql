-- Whether the sandbox's user stopped it (POST /stop), as opposed to the thermal manager or a
-- daemon shutdown: a user-stopped sandbox stays stopped (guest routes answer 409 until
-- `start`), a sandbox put to sleep wakes on the next request.
ALTER TABLE sandboxes ADD COLUMN user_stopped INTEGER NOT NULL DEFAULT 0;
