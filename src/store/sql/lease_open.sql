-- $1: the outbound queue lives in this process (the in-process transport).
INSERT INTO acquirer_leases (in_process) VALUES ($1) RETURNING id
