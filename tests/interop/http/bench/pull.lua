-- wrk script: long-poll consume. Each request pulls up to MAX messages (auto-ack) from
-- QUEUE, waiting up to 1 s when it is empty; the done() line counts messages received.
local max = tonumber(os.getenv("MAX") or "100")
local queue = os.getenv("QUEUE") or "bench"
wrk.method = "POST"
wrk.path = "/api/queues/%2F/" .. queue .. "/get"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic Z3Vlc3Q6Z3Vlc3Q="
wrk.body = '{"max_messages":' .. max .. ',"wait_ms":1000,"auto_ack":true}'

local threads = {}
function setup(thread)
  thread:set("got", 0)
  table.insert(threads, thread)
end

got = 0
function response(status, headers, body)
  local _, n = string.gsub(body, '"payload_bytes"', "")
  got = got + n
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("got") end
  io.write(string.format("messages received: %d in %.1f s = %.0f messages/s (%d requests)\n",
    total, summary.duration / 1e6, total / (summary.duration / 1e6), summary.requests))
end
