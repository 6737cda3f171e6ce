-- Case 5: password logins, continuously (wrk ... -- PREFIX N PASSWORD):
-- each request logs in as the next of the users PREFIX0 .. PREFIX<N-1>.
local prefix, users, password
local next_user = 0

function init(args)
  prefix, users, password = args[1], tonumber(args[2]), args[3]
  next_user = math.random(0, users - 1)
  wrk.method = "POST"
  wrk.path = "/token"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
end

function request()
  next_user = (next_user + 1) % users
  local body = "grant_type=password&username=" .. prefix .. next_user .. "&password=" .. password
  return wrk.format(nil, nil, nil, body)
end
