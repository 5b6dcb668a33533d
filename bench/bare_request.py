import json, socket, sys
# The cli baseline: a script that imports only socket and json (sys is built in) and sends one request.
# Usage: python bench/bare_request.py SOCKET METHOD PARAMS_JSON
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": sys.argv[2], "params": json.loads(sys.argv[3])}).encode() + b"\n")
buf = b""
while b"\n" not in buf:
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
resp = json.loads(buf)
print(json.dumps(resp.get("result")))
sys.exit(1 if "error" in resp else 0)
