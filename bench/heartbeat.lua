-- wrk script: heartbeats from INSTANCES distinct instances of service "fleet",
-- paced by DELAY_MS per connection (26 connections x 2 ms: up to 13,000/s;
-- wrk and the box decide how close it gets).
local n = 0
local instances = tonumber(os.getenv("INSTANCES") or "5000")
local pause = tonumber(os.getenv("DELAY_MS") or "2")
local headers = { ["Content-Type"] = "application/json" }

request = function()
  n = n + 1
  local id = n % instances
  local body = string.format('{"service":"fleet","id":"i-%d","address":"10.1.%d.%d:8080"}',
    id, math.floor(id / 250), id % 250 + 1)
  return wrk.format("POST", "/registry", headers, body)
end

delay = function()
  return pause
end

done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format("heartbeats: %d in %.1fs = %.0f/s, non-2xx %d\n",
    summary.requests, secs, summary.requests / secs, summary.errors.status))
end
