-- Releases only a lease this node holds.
-- KEYS: lease. ARGV: owner. Answers 1 if released, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
