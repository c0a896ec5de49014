-- wrk script: HTTP publish over keep-alive connections.
-- BATCH=1 posts one JSON envelope to /api/queues/%2F/bench/publish; BATCH=n posts n
-- messages to /publish/batch. Payload: PAYLOAD_BYTES bytes (default 16).
local batch = tonumber(os.getenv("BATCH") or "1")
local size = tonumber(os.getenv("PAYLOAD_BYTES") or "16")
local queue = os.getenv("QUEUE") or "bench"
local payload = string.rep("x", size)
local msg = '{"payload":"' .. payload .. '","properties":{"persistent":'
  .. (os.getenv("PERSISTENT") or "true") .. '}}'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic Z3Vlc3Q6Z3Vlc3Q=" -- guest:guest
if batch == 1 then
  wrk.path = "/api/queues/%2F/" .. queue .. "/publish"
  wrk.body = msg
else
  local parts = {}
  for i = 1, batch do parts[i] = msg end
  wrk.path = "/api/queues/%2F/" .. queue .. "/publish/batch"
  wrk.body = '{"messages":[' .. table.concat(parts, ",") .. ']}'
end

local errors = 0
function response(status, headers, body)
  if status ~= 200 then
    errors = errors + 1
    if errors <= 3 then io.stderr:write("status " .. status .. ": " .. body .. "\n") end
  end
end

function done(summary, latency, requests)
  io.write(string.format("messages/s: %.0f (batch %d, %d requests, %d non-2xx)\n",
    summary.requests / (summary.duration / 1e6) * batch, batch, summary.requests,
    summary.errors.status))
end
