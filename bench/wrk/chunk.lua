-- wrk: PUT /api/v1/session/$SESSION/chunk/N {"status":"verified"}, a fresh N per request.
-- Arguments after `--`: START (first chunk index) and, optionally, DELAY_MS to wait after each answer.
-- Each thread takes its own stride of indices so no two requests update the same chunk.
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  start = tonumber(args[1] or "0")
  pause = tonumber(args[2] or "0")
  n = 0
  session = os.getenv("SESSION")
  wrk.method = "PUT"
  wrk.body = '{"status":"verified"}'
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end

function request()
  local idx = start + n * 2 + (id - 1)
  n = n + 1
  return wrk.format(nil, "/api/v1/session/" .. session .. "/chunk/" .. idx)
end

function delay()
  return pause
end
