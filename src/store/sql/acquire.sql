SELECT * FROM tasks_acquire($1, $2, $3, $4)
