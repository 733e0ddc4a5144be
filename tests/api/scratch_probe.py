import uuid
from tests.api.conftest import Server

def show(r):
    if r is None: return
    print(r.request.method, r.request.url.raw_path[:80], r.status_code, r.headers.get("content-type"), r.headers.get("www-authenticate"), r.text[:200])

class Fresh:
    def __init__(self, server, user="admin", headers=None): self.server = server; self.user=user; self.headers=headers
    def __getattr__(self, name):
        def call(*args, **kw):
            with self.server.client(self.user) as c:
                if self.headers is not None: c.headers = self.headers
                try:
                    return getattr(c, name)(*args, **kw)
                except Exception as exc:
                    print("EXC", name, args[0][:60], repr(exc)); return None
        return call

def test_probe(server: Server) -> None:
    a = Fresh(server)
    J = {"content-type": "application/json"}
    show(a.post("/vms", content=b"{not json", headers=J))
    show(a.post("/vms", content=b"", headers=J))
    show(a.post("/vms", content=b"null", headers=J))
    show(a.post("/vms", content=b"[1,2]", headers=J))
    show(a.post("/vms", content=b'{"name":"x","vcpus":1,"memory":536870912}', headers={"content-type": "text/plain"}))
    show(a.post("/vms", json={"name": "x", "vcpus": "two", "memory": 536870912}))
    show(a.post("/vms", json={"name": "x", "vcpus": 1, "memory": 536870912, "color": "red"}))
    show(a.post("/vms", json={"name": "x", "vcpus": 10**30, "memory": 536870912}))
    show(a.post("/vms", json={"name": "x", "vcpus": 1.5, "memory": 536870912}))
    show(a.post("/vms", json={"name": "x", "vcpus": True, "memory": 536870912}))
    show(a.post("/vms", json={"name": "../../etc", "vcpus": 1, "memory": 536870912}))
    show(a.post("/vms", json={"name": "ünï", "vcpus": 1, "memory": 536870912}))
    show(a.post("/vms", json={"name": "x", "vcpus": 1, "memory": 536870912, "template": "../x"}))
    show(a.get("/vms/../../etc/passwd"))
    show(a.get("/vms/%2e%2e%2fetc"))
    show(a.get("/tasks", params={"limit": 0}))
    show(a.get("/tasks", params={"limit": 10**20}))
    show(a.get("/audit", params={"limit": -1}))
    show(a.get("/tasks/" + str(uuid.uuid4()) + "/wait", params={"timeout": -5}))
    show(a.delete("/vms/" + str(uuid.uuid4()), params={"force": "maybe"}))
    show(a.put("/vms/" + str(uuid.uuid4()) + "/state", json={"action": "explode"}))
    show(a.post("/tokens", json={"name": "a b"}))
    show(a.post("/tokens", json={"name": "t", "expires_in_days": -1}))
    show(a.post("/acl", json={"subject": "robot:x", "path": "/", "role": "Viewer"}))
    show(a.post("/acl", json={"subject": "user:admin", "path": "/etc/passwd", "role": "Viewer"}))
    show(a.post("/acl", json={"subject": "user:admin", "path": "/", "role": "NoSuchRole"}))
    show(a.get("/whoami", headers={"authorization": "Basic dXNlcjpwYXNz"}))
    n = Fresh(server, headers={})
    show(n.get("/whoami"))
    for h in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "Bearer dvt_wrong", "Token abc", "bearer " + server.tokens["admin"]]:
        show(Fresh(server, headers={"authorization": h}).get("/whoami"))
    show(n.get("/events"))
    show(n.post("/login", json={"name": "admin"}))
    assert False
