-- ARGV: channel, channel json, its incarnation. Only that incarnation is
-- changed: a channel deleted and made again meanwhile is another channel.
local doc = redis.call('HGET', channels, ARGV[1])
if not doc then return 'nochannel' end
if (cjson.decode(doc)['incarnation'] or '') ~= ARGV[3] then return 'nochannel' end
redis.call('HSET', channels, ARGV[1], ARGV[2])
return announce('ok')
