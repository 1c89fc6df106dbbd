-- ARGV: channel, drain id
--
-- A drain deleted through the API is announced as such ("drain-deleted ID", before
-- its channel's announcement, so a node knows it when it refreshes the channel):
-- only then does a node delete the drain's spool. A drain that merely vanishes
-- from the config (a config Redis that lost its data) keeps its spool.
if redis.call('SREM', chdrain, ARGV[2]) == 0 then return 'nodrain' end
redis.call('HDEL', drains, ARGV[2])
redis.call('PUBLISH', feed, 'drain-deleted ' .. ARGV[2])
return announce('ok')
