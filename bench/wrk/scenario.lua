-- One request shape, from the environment: WRK_METHOD, WRK_PATH (each "{id}" becomes a random
-- id in 1..MAX_ID), WRK_BODY (sent as JSON when set), WRK_AUTHORIZATION (the header, when set). done() prints one WRKJSON summary line.
local method = os.getenv("WRK_METHOD") or "GET"
local path = os.getenv("WRK_PATH") or "/"
local body = os.getenv("WRK_BODY")
local max_id = tonumber(os.getenv("MAX_ID") or "10000")
local headers = {}
local authorization = os.getenv("WRK_AUTHORIZATION")
if authorization and authorization ~= "" then
  headers["Authorization"] = authorization
end
if body and body ~= "" then
  headers["Content-Type"] = "application/json"
else
  body = nil
end
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("seed", threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0) * 7919)
end

function request()
  local target = path:gsub("{id}", function() return tostring(math.random(1, max_id)) end)
  return wrk.format(method, target, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'WRKJSON {"requests":%d,"seconds":%.3f,"rps":%.2f,"p50_ms":%.3f,"p99_ms":%.3f,' ..
    '"errors":%d,"non_2xx":%d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    e.connect + e.read + e.write + e.timeout, e.status))
end
