-- ARGV: channel. Its drains are announced deleted (see delete_drain.lua).
if redis.call('HDEL', channels, ARGV[1]) == 0 then return 'nochannel' end
local toks = redis.call('SMEMBERS', chtok)
if #toks > 0 then redis.call('HDEL', tokens, unpack(toks)) end
local ids = redis.call('SMEMBERS', chdrain)
if #ids > 0 then redis.call('HDEL', drains, unpack(ids)) end
for _, id in ipairs(ids) do redis.call('PUBLISH', feed, 'drain-deleted ' .. id) end
redis.call('DEL', chtok, chdrain)
return announce('ok')
