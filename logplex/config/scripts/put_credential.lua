-- ARGV: credential id, json ('' = delete)[, the json expected there now ('' = none)].
-- With the third, a credential changed since it was read is left alone: 'changed'.
-- Announced as a credential, not a channel.
if ARGV[3] ~= nil and (redis.call('HGET', creds, ARGV[1]) or '') ~= ARGV[3] then
  return 'changed'
end
if ARGV[2] == '' then
  if redis.call('HDEL', creds, ARGV[1]) == 0 then return 'nocred' end
else
  redis.call('HSET', creds, ARGV[1], ARGV[2])
end
redis.call('INCR', version)
redis.call('PUBLISH', feed, 'cred ' .. ARGV[1])
return 'ok'
