-- proxy-wasm shared data: set KEYS[1] to ARGV[1] if ARGV[2] (the
-- version the filter read) is 0 or the version stored; each set moves the
-- version on (never to 0). Answers 1 when set, 0 on a mismatch.
local version = tonumber(redis.call('HGET', KEYS[1], 'c') or '0')
local cas = tonumber(ARGV[2])
if cas ~= 0 and cas ~= version then
  return 0
end
local next = version + 1
if next > 4294967295 then
  next = 1
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'c', next)
return 1
