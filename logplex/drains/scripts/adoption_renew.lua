-- Renews only a lease this node holds.
-- KEYS: lease. ARGV: owner, milliseconds. Answers 1 if renewed, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
