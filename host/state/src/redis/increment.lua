-- Add ARGV[1] to the counter at KEYS[1]; a new counter expires after
-- ARGV[2] milliseconds when given (an existing one keeps its expiry).
local new = redis.call('EXISTS', KEYS[1]) == 0
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if new and ARGV[2] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
