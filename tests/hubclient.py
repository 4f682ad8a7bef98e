"""Drive a running beamside hub the way a client does: REST for users and servers, a kernel over websocket."""

from __future__ import annotations

import json
import time
import uuid

import requests
import websocket


class Hub:
    """The hub's REST API with a token (the supervisor's service token in tests)."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"token {token}"}

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return requests.request(method, f"{self.url}/hub/api{path}", headers=self.headers, **kwargs)

    def spawn(self, user: str, timeout: float = 180, **options) -> float:
        """Start ``user``'s server (with the spawner's ``options``, if any) and wait until it is
        ready; returns seconds to ready."""
        self.api("POST", f"/users/{user}")
        t0 = time.perf_counter()
        r = self.api("POST", f"/users/{user}/server", **({"json": options} if options else {}))
        if r.status_code not in (201, 202, 400):
            raise RuntimeError(f"spawn of {user} failed: {r.status_code} {r.text[:300]}")
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            model = self.api("GET", f"/users/{user}").json()
            server = model["servers"].get("")
            if server and server.get("ready"):
                return time.perf_counter() - t0
            if not model["servers"] and not model.get("pending"):
                raise RuntimeError(f"spawn of {user} failed (see the hub log)")
            time.sleep(0.2)
        raise TimeoutError(f"server of {user} not ready after {timeout} s")

    def stop(self, user: str, timeout: float = 60) -> None:
        deadline = time.perf_counter() + timeout
        asked = -1e9
        while time.perf_counter() < deadline:
            if time.perf_counter() - asked > 5:
                # asked again: a stop that meets a spawn being cancelled is answered 500 "pending spawn"
                # by JupyterHub (stop_single_user), as an admin's second click would
                self.api("DELETE", f"/users/{user}/server")
                asked = time.perf_counter()
            if not self.api("GET", f"/users/{user}").json()["servers"]:
                return
            time.sleep(0.2)
        raise TimeoutError(f"server of {user} still running after {timeout} s")

    def token(self, user: str, **body) -> str:
        r = self.api("POST", f"/users/{user}/tokens", json={"expires_in": 3600, **body})
        r.raise_for_status()
        return r.json()["token"]


class Kernel:
    """One kernel in a user's server, reached through the proxy (token in the header: the hub
    ignores tokens in websocket URLs)."""

    def __init__(self, hub_url: str, user: str, token: str):
        self.base = f"{hub_url.rstrip('/')}/user/{user}"
        self.headers = {"Authorization": f"token {token}"}
        r = requests.post(f"{self.base}/api/kernels", headers=self.headers, json={"name": "python3"}, timeout=60)
        r.raise_for_status()
        self.id = r.json()["id"]
        self.token = token
        self._connect()
        # Widget messages with buffers (the viewer's images) come as binary frames: their sizes
        # are what an update costs on the wire.
        self.binary: list[int] = []

    def _connect(self) -> None:
        ws_url = self.base.replace("http", "ws", 1) + f"/api/kernels/{self.id}/channels"
        self.ws = websocket.create_connection(ws_url, header=[f"Authorization: token {self.token}"], timeout=300)
        self.session = uuid.uuid4().hex
        self.last_used = time.monotonic()

    def run(self, code: str, timeout: float = 300) -> dict:
        """Execute ``code``; returns {"status", "stdout", "stderr", "result", "error"}."""
        # The server pings every 30 s and closes a channel whose pings went unanswered for 90 s;
        # this client answers only while it reads, so a channel idle for a minute is opened afresh
        # (the kernel itself keeps running and keeps its state).
        if time.monotonic() - self.last_used > 60:
            self.ws.close()
            self._connect()
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": self.session,
                       "username": "test", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        out = {"status": None, "stdout": "", "stderr": "", "result": None, "error": None}
        deadline = time.perf_counter() + timeout
        idle = False
        # done when both the reply (shell) and the kernel's "idle" (iopub, after all output) are in
        while time.perf_counter() < deadline and not (idle and out["status"]):
            raw = self.ws.recv()
            if isinstance(raw, bytes):
                self.binary.append(len(raw))
                continue
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out[content["name"]] += content["text"]
            elif kind == "execute_result":
                out["result"] = content["data"].get("text/plain")
            elif kind == "error":
                out["error"] = f"{content['ename']}: {content['evalue']}"
            elif kind == "execute_reply":
                out["status"] = content["status"]
            elif kind == "status" and content.get("execution_state") == "idle":
                idle = True
        self.last_used = time.monotonic()
        if idle and out["status"]:
            return out
        raise TimeoutError(f"no reply to {code[:60]!r} in {timeout} s")

    def close(self) -> None:
        """Close the channel and shut the kernel down (quietly, if the server is already gone)."""
        try:
            self.ws.close()
            requests.delete(f"{self.base}/api/kernels/{self.id}", headers=self.headers, timeout=30)
        except (requests.RequestException, websocket.WebSocketException, OSError):
            pass
