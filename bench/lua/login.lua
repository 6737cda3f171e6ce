-- Case 5: password logins, continuously (wrk ... -- USER PASSWORD).
function init(args)
  wrk.method = "POST"
  wrk.path = "/token"
  wrk.body = "grant_type=password&username=" .. args[1] .. "&password=" .. args[2]
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
end
