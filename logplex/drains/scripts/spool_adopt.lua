-- KEYS: a departed node's list and meta, this node's list and meta. ARGV: max
-- bytes, frame id of a chunk being delivered right now ('' if none). Moves every
-- chunk of the departed spool, in order, to the tail of this node's spool in one
-- step (so a returning node finds nothing, and nothing is moved twice), then
-- keeps this node's bound the way a push does: the oldest whole chunks go.
-- Answers {chunks, messages moved, chunks, messages dropped, bytes held}.
local chunks, messages = 0, 0
while true do
  local chunk = redis.call('LMOVE', KEYS[1], KEYS[3], 'LEFT', 'RIGHT')
  if not chunk then break end
  local n = count_of(chunk)
  redis.call('HINCRBY', KEYS[4], 'bytes', #chunk)
  redis.call('HINCRBY', KEYS[4], 'messages', n)
  chunks = chunks + 1
  messages = messages + n
end
redis.call('DEL', KEYS[2])
local dropped, dropped_chunks = 0, 0
if chunks > 0 then
  dropped, dropped_chunks = trim(KEYS[3], KEYS[4], tonumber(ARGV[1]), ARGV[2])
end
return {chunks, messages, dropped_chunks, dropped, bytes_of(KEYS[4])}
