"""The settings schema: one set of typed sections for the embedded settings file and the Helm values.

What the embedded mode reads (``Settings.from_yaml``) is checked here; what the
chart ships to the hub (``Settings.from_helm_values``) is checked against the
rendered chart in ``tests/test_helm.py``.
"""

from __future__ import annotations

import pytest
from beamside_hub import settings
from beamside_hub.settings import Settings


def write(tmp_path, text: str):
    path = tmp_path / "beamside.yaml"
    path.write_text(text)
    return path


def test_settings_reject_unknown_keys_and_incomplete_oidc(tmp_path):
    with pytest.raises(ValueError, match="unknown setting hub.'prot'"):
        settings.load(write(tmp_path, "hub: {prot: 9000}\n"))
    with pytest.raises(ValueError, match="auth.oidc.authorize_url"):
        settings.load(write(tmp_path, "auth: {type: oidc}\n"))
    assert settings.load(write(tmp_path, "hub: {state_dir: state}\n")).hub.state_dir == str(tmp_path / "state")


@pytest.mark.parametrize("text, message", [
    ("hub: {port: eighty}\n", "setting hub.port must be int, got 'eighty'"),
    ("dask: {enabled: 'yes'}\n", "setting dask.enabled must be bool"),
    ("dask: {max_workers: true}\n", "setting dask.max_workers must be int"),  # a bool is no count
    ("singleuser: 3\n", "setting singleuser must be a mapping"),
    ("auth: {oidc: {allowed_groups: staff}}\n", "setting auth.oidc.allowed_groups must be list"),
    ("- hub\n", "the settings must be a mapping"),
])
def test_settings_name_the_key_and_the_type_they_want(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        settings.load(write(tmp_path, text))


@pytest.mark.parametrize("text, key", [
    ("singleuser: {uid: 5000}\n", "singleuser.uid"),
    ("data: {volume: {type: nfs}}\n", "data.volume"),
    ("dask: {scheduler_memory: 4 G}\n", "dask.scheduler_memory"),
])
def test_kubernetes_only_settings_are_refused_in_the_embedded_file(tmp_path, text, key):
    """Silently ignoring them would let an admin believe, say, that user processes run as uid 5000."""
    with pytest.raises(ValueError, match=f"setting {key} only applies on kubernetes"):
        settings.load(write(tmp_path, text))


def test_defaults_are_filled_in_once(tmp_path):
    """The passwords file's default is the settings' (``beamside up`` and ``beamside passwd`` read it there)."""
    s = settings.load(write(tmp_path, "hub: {state_dir: st}\nsingleuser: {cpu_limit: 2}\n"))
    assert s.auth.passwords_file == str(tmp_path / "st" / "secrets" / "passwords.yaml")
    assert s.singleuser.cpu_limit == 2 and s.dask.max_workers == 4  # ints pass as floats; the rest default
    assert Settings.from_dict(s.to_dict()) == s  # the runtime file carries them unchanged
    assert s.replace(hub={"port": 9000}).hub.port == 9000 and s.hub.port == 8000


@pytest.mark.parametrize("text, message", [
    ("slurm: {partition: gpu}\n", "the slurm settings need platform: slurm"),
    ("platform: pbs\n", "platform must be 'local' or 'slurm'"),
    ("platform: slurm\nslurm: {walltime: 8h}\n", "slurm.walltime: time '8h' is not"),
    ("platform: slurm\nslurm: {cores: 16, max_cores: 8}\n", "must lie within slurm.max_cores"),
    ("platform: slurm\nslurm: {max_memory: lots}\n", "slurm.max_memory: 'lots' is not a size"),
    ("platform: slurm\nsingleuser: {isolation: none}\n", "singleuser.isolation: none cannot apply"),
    ("platform: slurm\nslurm: {server_ip: node1}\n", "slurm.server_ip: 'node1' is not an IP address or \"node\""),
    ("platform: slurm\nslurm: {hub_ip: node}\n", "slurm.hub_ip: 'node' is not an IP address"),
    ("platform: slurm\nslurm: {partitions: [long, 7]}\n", "slurm.partitions: .* is not a list of partition names"),
])
def test_slurm_settings_are_checked_where_the_admin_wrote_them(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        settings.load(write(tmp_path, text))


def test_slurm_settings_load_with_their_defaults(tmp_path):
    s = settings.load(write(tmp_path, "platform: slurm\nslurm: {partition: debug, max_walltime: '1-00:00:00'}\n"))
    assert settings.load(write(tmp_path, "platform: slurm\nslurm: {server_ip: node}\n")).slurm.server_ip == "node"
    assert s.platform == "slurm" and s.slurm.partition == "debug" and s.slurm.server_ip == "127.0.0.1"
    assert settings.walltime(s.slurm.max_walltime) == 86400 and settings.walltime("8:00:00") == 28800
