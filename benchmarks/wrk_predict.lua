-- POST /predict with a .npy body, for wrk's closed loop (README, Serving: "A closed-loop client test"):
--   python -c "import numpy as np; np.save('x.npy', np.zeros((1, 28, 28), np.float32))"
--   wrk -t1 -c16 -d30s --latency -s benchmarks/wrk_predict.lua http://127.0.0.1:8000/predict
-- BODY=FILE names another .npy file.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-npy"
local file = assert(io.open(os.getenv("BODY") or "x.npy", "rb"))
wrk.body = file:read("*a")
file:close()
