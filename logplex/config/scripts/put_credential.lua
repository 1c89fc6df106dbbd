-- ARGV: credential id, json ('' = delete). Announced as a credential, not a channel.
if ARGV[2] == '' then
  if redis.call('HDEL', creds, ARGV[1]) == 0 then return 'nocred' end
else
  redis.call('HSET', creds, ARGV[1], ARGV[2])
end
redis.call('INCR', version)
redis.call('PUBLISH', feed, 'cred ' .. ARGV[1])
return 'ok'
