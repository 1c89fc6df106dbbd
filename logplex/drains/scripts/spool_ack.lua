-- A chunk was delivered: it leaves the spool if it still is the head.
-- KEYS: list, meta. ARGV: its frame id. Answers {1 if removed else 0, bytes held}.
local removed = remove_head(KEYS[1], KEYS[2], ARGV[1])
return {removed, bytes_of(KEYS[2])}
