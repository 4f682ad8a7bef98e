"""What a user's sandbox contains, decided from the catalog (pure functions, no process started)."""

from __future__ import annotations

from pathlib import Path

import yaml

from analysis_lib import Policy
from analysis_lib.catalog import Catalog, load_catalog
from beamside_hub import accounts, sandbox


def spec_for(facility, user) -> tuple[sandbox.SandboxSpec, Catalog]:
    cat = load_catalog(facility)
    spec = sandbox.SandboxSpec(
        home=Path(f"/homes/{user}"), data_root=cat.data_root, beamtimes=Policy(cat).mounts(user),
        software=[Path("/opt/venv")], catalog_dir=Path("/srv/sandboxes/x/catalog"), etc_dir=Path("/srv/sandboxes/x/etc"),
        audit_socket=Path("/srv/run/audit.sock"),
    )
    return spec, cat


def binds(argv, kind):
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == kind]


def test_only_the_users_beamtimes_are_mounted_read_only(facility):
    spec, cat = spec_for(facility, "alice")
    argv = sandbox.bwrap_argv(spec)
    ro = binds(argv, "--ro-bind")
    data = [(src, dst) for src, dst in ro if dst.startswith(str(cat.data_root))]
    assert data == [(str(cat.data_root / "p1"), str(cat.data_root / "p1"))]
    assert binds(argv, "--bind") == [("/homes/alice", "/homes/alice"), ("/srv/run/audit.sock", sandbox.IN_SANDBOX_AUDIT)]
    assert ("/srv/sandboxes/x/catalog", sandbox.IN_SANDBOX_CATALOG_DIR) in ro  # a folder: replacements show
    assert ("/", "/") not in ro and not any(dst == "/root" for _, dst in ro)
    # no host /etc: only what programs need, and a passwd/group of the sandbox's own
    assert ("/etc", "/etc") not in ro
    etc = {dst for _, dst in ro if dst.startswith("/etc")}
    assert ("/srv/sandboxes/x/etc/passwd", "/etc/passwd") in ro and ("/srv/sandboxes/x/etc/group", "/etc/group") in ro
    assert not etc & {"/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/ssh", "/etc/subuid"}
    own = ("passwd", "group", "hosts", "machine-id")  # the sandbox's own, never the host's (its machine-id names it)
    assert all((f"/srv/sandboxes/x/etc/{name}", f"/etc/{name}") in ro and (f"/etc/{name}", f"/etc/{name}") not in ro
               for name in own)
    assert etc <= {f"/etc/{n}" for n in (*sandbox.ETC_ALLOWED, *own, "ipython/ipython_kernel_config.json")}
    assert (str(sandbox.IPYTHON_KERNEL_CONFIG), "/etc/ipython/ipython_kernel_config.json") in ro  # the memory notice
    assert {"--unshare-user", "--unshare-pid", "--unshare-ipc"} <= set(argv)
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert "--new-session" not in argv  # the sandbox must stay in its launcher's process group
    assert argv[-1] == "--"


def test_bob_gets_both_of_his_beamtimes(facility):
    spec, cat = spec_for(facility, "bob")
    mounted = {dst for _, dst in binds(sandbox.bwrap_argv(spec), "--ro-bind") if dst.startswith(str(cat.data_root))}
    assert mounted == {str(cat.data_root / "p1"), str(cat.data_root / "p12")}


def test_user_catalog_hides_other_beamtimes_and_members(facility):
    cat = load_catalog(facility)
    view = cat.view_for("alice")
    assert [bt["id"] for bt in view["beamtimes"]] == ["bt-1"]
    assert view["beamtimes"][0]["members"] == [{"user": "alice", "role": "pi"}]
    text = yaml.safe_dump(view)
    assert "bt-3" not in text and "carol" not in text and "bob" not in text
    again = Catalog.from_dict(yaml.safe_load(text))  # the library reads it as a normal catalog
    assert [bt.id for bt in again.readable("alice")] == ["bt-1"]


def test_unix_names_are_safe_and_distinct():
    assert accounts.unix_name("alice") == "bs-alice"
    odd = accounts.unix_name("Grace.Hopper@example.org")
    assert odd.startswith("bs-grace-hopper-") and "--" in odd and len(odd) <= 32  # stem--hash (tests/test_accounts.py)
    assert accounts.unix_name("a:b") != accounts.unix_name("a;b")
    assert all(c.isalnum() or c in "-_" for c in odd)
