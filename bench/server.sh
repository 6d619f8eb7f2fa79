# Sourced by the bench/*_gpu.sh scripts: one `aiollm serve` in the background.
# start_server LOG SERVE_ARGS...: runs `aiollm serve SERVE_ARGS --port $PORT` with its output in
# LOG and its pid in SERVER_PID; returns once /health answers 200, or exits the script with the
# log's tail if the server dies first or is not healthy within 600 s.
# stop_server: SIGTERM, then wait for the server to exit.
start_server() {
  local log=$1; shift
  python3 -m aiollm.cli serve "$@" --port "$PORT" > "$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -30 "$log"; exit 1; }
    sleep 1
  done
  echo "server not healthy after 600 s"; tail -30 "$log"; kill -TERM "$SERVER_PID"; exit 1
}

stop_server() {
  kill -TERM "$SERVER_PID"; wait "$SERVER_PID"
}
