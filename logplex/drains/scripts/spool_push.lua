-- Appends a chunk to a spool (or puts it back in front), then keeps the bound.
-- KEYS: list, meta. ARGV: chunk, message count, max bytes, '1' to push at the head,
-- frame id of a chunk being delivered right now ('' if none): never dropped.
-- Answers {messages dropped, bytes held}.
if ARGV[4] == '1' then
  redis.call('LPUSH', KEYS[1], ARGV[1])
else
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
redis.call('HINCRBY', KEYS[2], 'bytes', #ARGV[1])
redis.call('HINCRBY', KEYS[2], 'messages', tonumber(ARGV[2]))
local dropped = trim(KEYS[1], KEYS[2], tonumber(ARGV[3]), ARGV[5])
return {dropped, bytes_of(KEYS[2])}
