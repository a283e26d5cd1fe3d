SELECT id, created FROM tasks_submit($1, $2, $3, $4, $5, $6, $7, $8, $9)
