-- KEYS: the re-seed lock; ARGV: this node's lock value. Frees the lock only if it is still ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 'ok'
