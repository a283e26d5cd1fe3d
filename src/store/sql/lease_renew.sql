-- Renews leases (ids in order: the global lock order) and records the last batch each sent; a lease row deleted
-- while its process was away (dead for an hour) is put back.
INSERT INTO acquirer_leases (id, sent_through)
SELECT l.id, l.sent FROM unnest($1::int8[], $2::int8[]) AS l(id, sent) ORDER BY l.id
ON CONFLICT (id) DO UPDATE SET
    alive_at = now(),
    sent_through = GREATEST(acquirer_leases.sent_through, EXCLUDED.sent_through)
