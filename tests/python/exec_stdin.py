"""Exec stdin the way clients not written here send it: the Python client's
`write_stdin` of a str goes out as a WebSocket text frame; a raw WebSocket
client speaks v4.channel.k8s.io with text frames and v4.base64.channel.k8s.io.
Run by tests/exec_stdin.rs with the server's kubeconfig and a running pod."""
import base64
import sys
import time

from kubernetes import client, config
from kubernetes.stream import stream
from kubernetes.stream.ws_client import ABNF, create_websocket, get_websocket_url


def python_client_text_stdin(core, pod):
    resp = stream(core.connect_get_namespaced_pod_exec, pod, "default",
                  command=["cat"], stdin=True, stdout=True, stderr=True, tty=False,
                  _preload_content=False)
    deadline = time.time() + 30
    out = ""
    resp.write_stdin("hello as text\n")  # a str: a text frame
    while "hello as text\n" not in out:
        assert resp.is_open() and time.time() < deadline, f"text stdin not echoed: {out!r}"
        resp.update(timeout=1)
        out += resp.read_stdout(timeout=0)
    resp.write_stdin(b"and as binary\n")  # bytes: a binary frame
    while "and as binary\n" not in out:
        assert resp.is_open() and time.time() < deadline, f"binary stdin not echoed: {out!r}"
        resp.update(timeout=1)
        out += resp.read_stdout(timeout=0)
    assert out == "hello as text\nand as binary\n", out
    resp.close_channel(0)  # v5: stdin's end, so cat exits
    while resp.is_open():
        assert time.time() < deadline, "cat did not exit after stdin closed"
        resp.update(timeout=1)
    assert resp.returncode == 0, resp.returncode
    print("python client: text and binary stdin echoed")


def raw_session(cfg, pod, protocol, sends):
    """Exec `sh -c 'read line; echo "$line"'` (one line back) over a WebSocket speaking `protocol`, sending the
    (opcode, payload) frames, and collect (opcode, payload) until the socket
    closes."""
    url = get_websocket_url(
        f"{cfg.host}/api/v1/namespaces/default/pods/{pod}/exec",
        [("command", ["sh", "-c", 'read line; echo "$line"']), ("stdin", "true"), ("stdout", "true"), ("stderr", "true")])
    headers = {"sec-websocket-protocol": protocol}
    auth = cfg.get_api_key_with_prefix("authorization")
    if auth:
        headers["authorization"] = auth
    ws = create_websocket(cfg, url, headers)
    chosen = {k.lower(): v for k, v in (ws.getheaders() or {}).items()}.get("sec-websocket-protocol")
    assert chosen == protocol, chosen
    for opcode, payload in sends:
        ws.send(payload, opcode=opcode)
    got = []
    ws.settimeout(30)
    while True:
        opcode, data = ws.recv_data()
        if opcode == ABNF.OPCODE_CLOSE:
            break
        got.append((opcode, data))
    ws.close()
    return got


def v4_text_stdin(cfg, pod):
    got = raw_session(cfg, pod, "v4.channel.k8s.io", [(ABNF.OPCODE_TEXT, "\x00line of text\nrest\n")])
    stdout = b"".join(d[1:] for op, d in got if d[:1] == b"\x01")
    status = b"".join(d[1:] for op, d in got if d[:1] == b"\x03")
    assert stdout == b"line of text\n", got
    assert b'"Success"' in status, got
    print("v4.channel.k8s.io: text stdin read")


def v4_base64(cfg, pod):
    line = base64.b64encode(b"base64 line\n").decode()
    got = raw_session(cfg, pod, "v4.base64.channel.k8s.io", [(ABNF.OPCODE_TEXT, "0" + line)])
    assert all(op == ABNF.OPCODE_TEXT for op, _ in got), got
    text = [d.decode() for _, d in got]
    stdout = b"".join(base64.b64decode(t[1:]) for t in text if t[:1] == "1")
    status = b"".join(base64.b64decode(t[1:]) for t in text if t[:1] == "3")
    assert stdout == b"base64 line\n", text
    assert b'"Success"' in status, text
    print("v4.base64.channel.k8s.io: base64 stdin read, base64 stdout written")


def main(kubeconfig, pod):
    config.load_kube_config(config_file=kubeconfig)
    cfg = client.Configuration.get_default_copy()
    core = client.CoreV1Api()
    python_client_text_stdin(core, pod)
    v4_text_stdin(cfg, pod)
    v4_base64(cfg, pod)
    print("all checks passed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
