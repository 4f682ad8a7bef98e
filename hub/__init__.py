"""Hub-side code of beamside (installed as ``beamside_hub``).

JupyterHub configuration, the spawn hook that turns the catalog into per-user
mounts, and the hub-managed services. Built in the hub issue; the catalog it
reads is :mod:`analysis_lib.catalog`, never a copy of it.
"""
