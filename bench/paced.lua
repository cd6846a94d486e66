-- wrk script: keep-alive GETs paced by DELAY_MS per connection (an offered
-- load below saturation, so latency reflects interference, not queueing).
local pause = tonumber(os.getenv("PACE_MS") or "2")
delay = function()
  return pause
end
