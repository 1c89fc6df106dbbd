local want, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
local out, total, start = {}, 0, 0
while #out < want do
  local page = redis.call('LRANGE', KEYS[1], start, start + math.min(99, want - #out - 1))
  if #page == 0 then break end
  for _, line in ipairs(page) do
    if #out > 0 and total + #line > budget then return out end
    out[#out + 1] = line
    total = total + #line
  end
  start = start + #page
end
return out
