-- spool_ack, answering the next chunk: one round trip per batch while a spool drains.
-- KEYS: list, meta. ARGV: the delivered chunk's frame id. Answers {next chunk or nil, bytes held}.
remove_head(KEYS[1], KEYS[2], ARGV[1])
return {redis.call('LINDEX', KEYS[1], 0), bytes_of(KEYS[2])}
