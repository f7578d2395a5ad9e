-- Every change to keys and memberships, written in the change's own transaction.
CREATE TABLE audit_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor      text NOT NULL CHECK (actor IN ('admin', 'cli') OR actor LIKE 'user:%'),
    action     text NOT NULL CHECK (action IN ('key.created', 'key.updated', 'key.rotated',
                                               'key.revoked', 'membership.added',
                                               'membership.removed')),
    user_id    text,
    key_id     uuid,
    details    jsonb NOT NULL DEFAULT '{}',
    request_id text,
    ip         text
);

CREATE INDEX audit_events_user ON audit_events (user_id, id);
CREATE INDEX audit_events_key ON audit_events (key_id, id);

-- Append-only: nothing in the product updates or deletes an event, and the database
-- refuses it too.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END;
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
