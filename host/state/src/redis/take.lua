-- Take ARGV[1] tokens from the bucket at KEYS[1]: ARGV[2] tokens, refilled
-- over ARGV[3] milliseconds. Atomic, on Redis's clock, so every gateway's
-- requests draw from one bucket whatever their own clocks say. A bucket
-- expires when it would be full again (a full bucket is the same as none).
-- Answers {allowed (0/1), remaining, seconds until full, ms until allowed}.
local cost = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local window = math.max(tonumber(ARGV[3]), 1) * 1000 -- microseconds
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local rate = capacity / window -- tokens per microsecond

local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)

local allowed = 0
local retry = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry = math.ceil((cost - tokens) / rate / 1000)
end

local until_full = (capacity - tokens) / rate
if until_full <= 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.17g', now))
  redis.call('PEXPIRE', KEYS[1], math.ceil(until_full / 1000) + 1)
end
return {allowed, math.floor(tokens), math.ceil(until_full / 1000000), retry}
