-- Case 4: every request carries an expired access cookie and a refresh
-- token that no other request uses. The first tokens come from a file of
-- fresh logins (wrk ... -- TOKENS_FILE EXPIRED_ACCESS_TOKEN); each
-- successful refresh hands back a successor, which joins the queue, so no
-- token is ever presented twice.
local queue, head, tail = {}, 1, 0
local expired
failures, rotated = 0, 0

function init(args)
  local f = assert(io.open(args[1]))
  for line in f:lines() do
    tail = tail + 1
    queue[tail] = line
  end
  f:close()
  expired = args[2]
end

function request()
  local token = queue[head]
  if token == nil then
    token = "queue-empty"
  else
    queue[head] = nil
    head = head + 1
  end
  return wrk.format("GET", "/refresh", {
    ["Cookie"] = "access_token=" .. expired .. "; refresh_token=" .. token,
  })
end

function response(status, headers, body)
  -- wrk keeps the last of repeated headers: authgate sets the access
  -- cookie first and the refresh cookie last.
  local cookie = headers["set-cookie"] or headers["Set-Cookie"] or ""
  local successor = cookie:match("^refresh_token=([^;]+)")
  if status == 200 and successor then
    rotated = rotated + 1
    tail = tail + 1
    queue[tail] = successor
  else
    failures = failures + 1
  end
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format("bench: rotated=%d\nbench: failures=%d\n", t:get("rotated"), t:get("failures")))
  end
end
