local shards, version, merge, feed = unpack(KEYS)
if tonumber(redis.call('GET', version) or '0') ~= tonumber(ARGV[1]) then return -1 end
if redis.call('EXISTS', merge) == 1 then return -2 end
redis.call('DEL', shards)
for i = 3, #ARGV, 2 do redis.call('HSET', shards, ARGV[i], ARGV[i + 1]) end
local v = redis.call('INCR', version)
redis.call('HSET', merge, 'plan', ARGV[2], 'version', v)
redis.call('PUBLISH', feed, 'shards ' .. v)
return v
