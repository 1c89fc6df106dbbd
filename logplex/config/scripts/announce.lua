-- Every script of a channel ends with `return announce(reply)`: the version is
-- bumped and the channel announced on the feed inside the same atomic step as
-- the write, so a node either sees the notification or sees a new version at
-- its next reconcile. Needs the names of names.lua; ARGV[1] is the channel.
local function announce(reply)
  redis.call('INCR', version)
  redis.call('PUBLISH', feed, 'channel ' .. ARGV[1])
  return reply
end
