# beamside's /etc/ipython inside every user sandbox (bound read-only by beamside_hub.sandbox).
# Kernels load the library's notice that tells the user, at their next cell, that a process of
# their server was stopped for going over its memory limit. A user's own profile may add to it.
c = get_config()  # noqa: F821
c.InteractiveShellApp.extensions.append("analysis_lib._limits")
