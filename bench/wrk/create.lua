-- wrk: POST /api/v1/session with the sender's bearer token (env TOKEN) and body (env BODY).
wrk.method = "POST"
wrk.body = os.getenv("BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
wrk.path = "/api/v1/session"
